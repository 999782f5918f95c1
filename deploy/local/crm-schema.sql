-- The CRM source tables of the local stack (`yespo-connector stack up --with postgres`), database `crm`.
-- Idempotent: it runs on every `stack up`. Columns match deploy/connector.yaml (contact mapping).
--
-- Roles:
--   crm_owner  NOLOGIN; owns the tables. Debezium's publication.autocreate.mode=filtered runs
--              CREATE PUBLICATION ... FOR TABLE customers, customer_groups, which PostgreSQL allows
--              only to the tables' owner (or a member of the owning role).
--   debezium   LOGIN REPLICATION (logical replication slot), member of crm_owner, CREATE on the database
--              (to create the publication). Password 'debezium': a local development stack only.

DO $$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'crm_owner') THEN
    CREATE ROLE crm_owner NOLOGIN;
  END IF;
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'debezium') THEN
    CREATE ROLE debezium LOGIN REPLICATION PASSWORD 'debezium';
  END IF;
  EXECUTE format('GRANT CONNECT, CREATE ON DATABASE %I TO debezium', current_database());
END
$$;

GRANT crm_owner TO debezium;

CREATE TABLE IF NOT EXISTS public.customers (
  id                    bigint PRIMARY KEY,
  external_id           text,
  first_name            text,
  last_name             text,
  email                 text,
  phone                 text,
  web_push_subscription text,
  city                  text,
  region                text,
  country               text,
  postal_code           text,
  address_line          text,
  birth_date            date,
  -- a column DEFAULT: with the JSON converter's replace.null.with.default=true an explicit NULL would be
  -- published as 'bronze'; the Connect config turns that off (debezium-events.md section 2.3)
  loyalty_level         text DEFAULT 'bronze',
  language_code         text,
  time_zone             text,
  updated_at            timestamptz NOT NULL DEFAULT now(),
  -- large free text: values over ~2 kB are TOASTed; an UPDATE that does not touch them must not blank
  -- them in the connector's state (debezium-events.md section 3.3)
  notes                 text
);

CREATE TABLE IF NOT EXISTS public.customer_groups (
  -- ON UPDATE CASCADE lets a customer's primary key change; Debezium then emits the child rows' changes
  -- in the same transaction as the customer's delete + create
  customer_id bigint NOT NULL REFERENCES public.customers (id) ON DELETE CASCADE ON UPDATE CASCADE,
  group_id    int    NOT NULL,
  group_name  text,
  PRIMARY KEY (customer_id, group_id)
);

ALTER TABLE public.customers OWNER TO crm_owner;
ALTER TABLE public.customer_groups OWNER TO crm_owner;

-- REPLICA IDENTITY FULL: PostgreSQL writes the whole old row to the WAL for UPDATE and DELETE. With the
-- default identity (primary key) pgoutput sends no `before` on UPDATE and only the key columns on DELETE
-- (all other columns arrive as null or a schema default), and an unchanged TOASTed `notes` arrives as
-- Debezium's placeholder. FULL gives real `before` images, lets Debezium 3.6 substitute the real old value
-- for unchanged TOASTed columns, and makes deletes of customer_groups rows carry group_name.
-- The cost is more WAL per UPDATE/DELETE, acceptable for CRM tables.
ALTER TABLE public.customers REPLICA IDENTITY FULL;
ALTER TABLE public.customer_groups REPLICA IDENTITY FULL;
