#!/bin/sh
# Demo traffic: a round of requests across the demo services every LOAD_INTERVAL seconds (default 1).
# Most succeed; a few 404s and 500s give the error panels something to show.
set -u
get() { curl -s -o /dev/null --max-time 10 --cacert /demo/cert.pem "$@" || true; }
i=0
while :; do
    i=$((i + 1))
    get "http://orders:8080/order/$i"
    get "http://shop:8000/checkout/$i"
    get "https://shop:8443/inventory/$i"
    get "http://catalog:5000/item/$((i % 5 + 1))"
    get "http://catalog:5000/items"
    if [ $((i % 10)) -eq 0 ]; then
        get "http://shop:8000/boom"
        get "http://shop:8000/nope"
        get "http://catalog:5000/slow"
    fi
    sleep "${LOAD_INTERVAL:-1}"
done
