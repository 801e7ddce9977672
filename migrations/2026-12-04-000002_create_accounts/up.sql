-- accounts: the system of record for customers, in third normal form. A
-- customer is one row of `customers` and its dependent rows; a create or
-- update of the whole customer replaces its dependent rows.
CREATE SCHEMA accounts;

CREATE TABLE accounts.customers (
    id         bigint      PRIMARY KEY CHECK (id > 0),
    -- The customer's aggregate version, as its last event carries it.
    version    bigint      NOT NULL CHECK (version > 0),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE accounts.customer_names (
    customer_id bigint PRIMARY KEY REFERENCES accounts.customers (id) ON DELETE CASCADE,
    title       text,
    first_name  text   NOT NULL,
    middle_name text,
    last_name   text   NOT NULL,
    suffix      text
);

CREATE TABLE accounts.customer_contacts (
    customer_id     bigint PRIMARY KEY REFERENCES accounts.customers (id) ON DELETE CASCADE,
    primary_phone   text,
    secondary_phone text,
    email           text
);

CREATE TABLE accounts.addresses (
    customer_id  bigint   NOT NULL REFERENCES accounts.customers (id) ON DELETE CASCADE,
    -- Place in the customer's list, from 0.
    position     smallint NOT NULL CHECK (position >= 0),
    address_type text     NOT NULL CHECK (address_type IN ('BILLING', 'SHIPPING')),
    description  text,
    address1     text     NOT NULL,
    address2     text,
    city         text     NOT NULL,
    state        text,
    postal_code  text,
    PRIMARY KEY (customer_id, position)
);

-- Only the masked number is ever stored: stars, then at most the last four
-- digits. The check refuses anything else, a full number included.
CREATE TABLE accounts.credit_cards (
    customer_id   bigint   NOT NULL REFERENCES accounts.customers (id) ON DELETE CASCADE,
    position      smallint NOT NULL CHECK (position >= 0),
    card_type     text,
    description   text,
    masked_number text     NOT NULL CHECK (masked_number ~ '^\*+[0-9]{0,4}$'),
    expiration    text,
    name_on_card  text,
    PRIMARY KEY (customer_id, position)
);
