// A Node.js TCP echo server as a `brood cluster` worker, with no brood code in it:
//
//   brood cluster --listen 127.0.0.1:7000 --workers 2 -- node examples/node/worker.js
//   brood cluster --listen 127.0.0.1:7000 --workers 2 --strategy shared -- node examples/node/worker.js
//
// The master knows a `node` program and speaks Node's IPC protocol to it
// (`--worker-protocol node`, the default for a program named node): the worker's
// `process.send` and `process.on('message')` work.
'use strict';
const net = require('net');

const server = net.createServer((socket) => {
  socket.on('error', () => {}); // a client that resets is not the worker's problem
  socket.pipe(socket);
});

const strategy = process.env.BROOD_CLUSTER_STRATEGY;
if (strategy === 'shared' || strategy === 'reuseport') {
  // The cluster's listening socket is fd 3: every worker accepts on it.
  server.listen({ fd: 3 });
} else {
  // round-robin, least-connections: the master accepts and sends each connection as
  // Node's own handle message, as Node's cluster master does.
  process.on('message', (m, socket) => {
    if (socket) server.emit('connection', socket);
  });
}

// Retiring (SIGHUP reload, scale down, stop): the master closes the channel. Stop taking
// connections; the open ones finish, then the process exits on its own.
process.on('disconnect', () => server.close());

// With --wait-ready, the master waits for this (as PM2's wait_ready).
if (process.send) process.send('ready');
