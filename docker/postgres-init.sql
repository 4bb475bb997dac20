-- The monolith's database and the catalog service's own database on one server
-- ("database per service"); the server runs with wal_level=logical (see docker-compose.yml).
CREATE DATABASE legacy;
CREATE DATABASE catalog;
