"""The production lab on a university server: a Docker Swarm stack (nginx with TLS, configurable-http-proxy,
the hub, PostgreSQL) built from the offline base, described by one site file, with backups, restores,
upgrades and the end of a term. Runs in the admin's ``teachlab deploy`` commands (and two small programs
in the hub's image: the health check and the database migrations)."""
