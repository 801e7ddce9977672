-- shop: products, orders, and shop's own copy of the customers it sells to,
-- fed by accounts' events only (shop never reads the accounts schema).
CREATE SCHEMA shop;

CREATE TABLE shop.products (
    id         uuid          PRIMARY KEY,
    name       text          NOT NULL,
    price      numeric(12,2) NOT NULL CHECK (price >= 0),
    -- Never below zero, whatever races for the last items.
    stock      integer       NOT NULL CHECK (stock >= 0),
    created_at timestamptz   NOT NULL DEFAULT now(),
    updated_at timestamptz   NOT NULL DEFAULT now()
);

-- shop's copy of a customer: the state carried by the latest accounts event
-- applied (its aggregate version); a deleted customer stays as a tombstone so
-- that an older event arriving late cannot bring it back.
CREATE TABLE shop.customers (
    id          bigint  PRIMARY KEY CHECK (id > 0),
    version     bigint  NOT NULL CHECK (version > 0),
    deleted     boolean NOT NULL DEFAULT false,
    title       text,
    first_name  text,
    middle_name text,
    last_name   text,
    suffix      text
);

CREATE TABLE shop.customer_addresses (
    customer_id  bigint   NOT NULL REFERENCES shop.customers (id) ON DELETE CASCADE,
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

-- An order keeps the address it ships to as it was when it was placed.
CREATE TABLE shop.orders (
    id                   uuid        PRIMARY KEY,
    customer_id          bigint      NOT NULL REFERENCES shop.customers (id),
    order_date           timestamptz NOT NULL,
    ship_address_type    text        NOT NULL CHECK (ship_address_type IN ('BILLING', 'SHIPPING')),
    ship_description     text,
    ship_address1        text        NOT NULL,
    ship_address2        text,
    ship_city            text        NOT NULL,
    ship_state           text,
    ship_postal_code     text
);

CREATE INDEX orders_customer_id ON shop.orders (customer_id);

-- An item keeps the product's name and price at the time of sale; no
-- foreign key to products, so that a product can be deleted while its
-- orders remain. The order's total is the sum of price * quantity.
CREATE TABLE shop.order_items (
    order_id     uuid          NOT NULL REFERENCES shop.orders (id) ON DELETE CASCADE,
    line         smallint      NOT NULL CHECK (line >= 0),
    product_id   uuid          NOT NULL,
    product_name text          NOT NULL,
    quantity     integer       NOT NULL CHECK (quantity > 0),
    price        numeric(12,2) NOT NULL CHECK (price >= 0),
    PRIMARY KEY (order_id, line),
    UNIQUE (order_id, product_id)
);
