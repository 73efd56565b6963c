#!/bin/bash
# The container's HEALTHCHECK: healthy while GET /readyz answers 200, i.e. the
# daemon serves a model and is not stopping. Uses bash's /dev/tcp, so the image
# needs no HTTP client. The port is IISAN_PORT, else the config file's `port`
# line, else 8080.
conf=${IISAN_CONFIG:-/etc/iisan/iisan.conf}
port=${IISAN_PORT:-}
if [ -z "$port" ] && [ -r "$conf" ]; then
  port=$(sed -n 's/^[[:space:]]*port[[:space:]]*=[[:space:]]*"\{0,1\}\([0-9]*\).*/\1/p' "$conf" | tail -n 1)
fi
port=${port:-8080}
exec 3<>"/dev/tcp/127.0.0.1/$port" || exit 1
printf 'GET /readyz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n' >&3
IFS= read -r -t 2 line <&3 || exit 1
case $line in
  "HTTP/1."?" 200 "*) exit 0 ;;
esac
echo "not ready: ${line%$'\r'}" >&2
exit 1
