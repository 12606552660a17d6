-- Roles for conveyor on PostgreSQL: an owner that runs the migrations, and an application role
-- for producers, workers and monitors that can use the tables but not change their shape.
--
--     psql -h db.internal -U postgres -d app \
--          -v db=app -v schema=conveyor -v owner=conveyor_owner -v app=conveyor_app \
--          -f roles.sql
--
-- Run it once, as a superuser or a role with CREATEROLE that owns the database. Give the roles
-- passwords afterwards (\password conveyor_app) or authenticate them another way (pg_hba.conf).
-- Then migrate once as the owner (any conveyor process with auto_migrate on, connecting as
-- conveyor_owner, does it), and connect everything else as the application role with
-- ?schema=conveyor&auto_migrate=false in its URL.

\set ON_ERROR_STOP on

CREATE ROLE :"owner" LOGIN;
CREATE ROLE :"app" LOGIN;
GRANT CONNECT ON DATABASE :"db" TO :"owner", :"app";

-- The owner owns the schema, so it may create (and later alter) conveyor's tables in it.
-- Migrations begin with CREATE SCHEMA IF NOT EXISTS, which PostgreSQL refuses without CREATE
-- on the database even when the schema exists: the owner gets that too.
CREATE SCHEMA :"schema" AUTHORIZATION :"owner";
GRANT CREATE ON DATABASE :"db" TO :"owner";

-- The application role reads and writes rows, and takes numbers from conveyor's sequence.
-- Default privileges apply to what the owner creates from now on, including by later
-- migrations; grant on existing tables too if the schema was migrated before this ran.
GRANT USAGE ON SCHEMA :"schema" TO :"app";
ALTER DEFAULT PRIVILEGES FOR ROLE :"owner" IN SCHEMA :"schema"
    GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO :"app";
ALTER DEFAULT PRIVILEGES FOR ROLE :"owner" IN SCHEMA :"schema"
    GRANT USAGE ON SEQUENCES TO :"app";
