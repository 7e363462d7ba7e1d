#!/bin/sh
# The libuv guide's tick program for raw CGI mode: stdout is the TCP connection.
echo $$ > "$PIDS/tick-$$"
echo "from $TCPREMOTEIP:$TCPREMOTEPORT"
i=0
while [ $i -lt 10 ]; do
    echo tick
    i=$((i + 1))
done
