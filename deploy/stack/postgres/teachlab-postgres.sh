#!/bin/sh
# Start the stack's PostgreSQL: make the cluster on first start, set the password from the Docker secret
# (at every start, so a new secret takes effect), make the two databases, then run the server as postgres,
# listening on 127.0.0.1 only. Local socket connections inside this container are trusted (pg_dump for
# backups runs here through docker exec); TCP needs the password.
set -eu
data="${TEACHLAB_DATABASE_DIR:?}"
port="${TEACHLAB_DATABASE_PORT:?}"
password_file="${TEACHLAB_DATABASE_PASSWORD_FILE:?}"
bin="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)"
as_postgres="setpriv --reuid=postgres --regid=postgres --init-groups"

install -d -o postgres -g postgres -m 0700 "$data"
install -d -o postgres -g postgres -m 2775 /run/postgresql
if [ ! -s "$data/PG_VERSION" ]; then
    $as_postgres "$bin/initdb" -D "$data" -U teachlab -E UTF8 --locale=C.UTF-8 \
        --auth-local=trust --auth-host=scram-sha-256 >/dev/null
fi
$as_postgres "$bin/pg_ctl" -D "$data" -o "-c listen_addresses='' -p $port" -w -s start
quoted="$(sed "s/'/''/g" "$password_file")"
$as_postgres "$bin/psql" -q -v ON_ERROR_STOP=1 -h /run/postgresql -p "$port" -U teachlab -d postgres <<SQL
SET password_encryption = 'scram-sha-256';
ALTER ROLE teachlab PASSWORD '$quoted';
SELECT 'CREATE DATABASE jupyterhub' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'jupyterhub')\gexec
SELECT 'CREATE DATABASE teachlab' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'teachlab')\gexec
SQL
$as_postgres "$bin/pg_ctl" -D "$data" -m fast -w -s stop
exec $as_postgres "$bin/postgres" -D "$data" -c listen_addresses=127.0.0.1 -p "$port"
