#!/bin/sh
# PostgreSQL for the demo, from Debian's package: a fresh throwaway cluster with one table, trusting
# the compose network (no password). Runs as the postgres user.
set -eu
bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
data=/tmp/pgdata
if [ ! -s "$data/PG_VERSION" ]; then
    "$bin/initdb" -D "$data" -U postgres --auth=trust >/dev/null
    echo "host all all 0.0.0.0/0 trust" >>"$data/pg_hba.conf"
    "$bin/postgres" --single -D "$data" postgres >/dev/null <<'SQL'
CREATE TABLE items (id integer PRIMARY KEY, name text NOT NULL, price numeric(8, 2) NOT NULL);
INSERT INTO items VALUES (1, 'kettle', 24.90), (2, 'teapot', 31.00), (3, 'mug', 6.50), (4, 'tray', 12.00);
SQL
fi
exec "$bin/postgres" -D "$data" -c listen_addresses='*' -k /tmp
