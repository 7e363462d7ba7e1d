// A Node.js HTTP app as a `brood cluster` worker, with no brood code in it:
//
//   brood cluster --listen 127.0.0.1:8080 --workers 4 --wait-ready -- node examples/node/http_worker.js
'use strict';
const http = require('http');

const server = http.createServer((req, res) => {
  res.end(`hello from node ${process.pid}\n`);
});

if (['shared', 'reuseport'].includes(process.env.BROOD_CLUSTER_STRATEGY)) {
  server.listen({ fd: 3 });
} else {
  process.on('message', (m, socket) => {
    if (socket) server.emit('connection', socket);
  });
}
// Retired: no new connections; idle keep-alive ones close, busy ones finish.
process.on('disconnect', () => server.close());
if (process.send) process.send('ready');
