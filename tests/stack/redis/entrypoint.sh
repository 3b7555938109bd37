#!/bin/sh
# Without a config file Redis accepts only loopback clients (protected mode); the other
# containers of the stack connect over its network, as with the redis image.
set -eu
if [ "$1" = redis-server ]; then
    set -- "$@" --protected-mode no
fi
exec "$@"
