-- shop's read side: views built from the events of accounts.customer.change,
-- shop.product.v1 and shop.order.v1 (shop::views::apply_view_event), read by
-- the query API. Disposable: a rebuild makes them again from the log.
--
-- Every row keeps the aggregate version of the last event it applied, and
-- an event is applied only when its version is newer: a redelivered or stale
-- event changes nothing. A deleted aggregate stays as a tombstone (deleted,
-- with its version) so that an older event arriving late cannot bring it back.
CREATE SCHEMA shop_view;

-- The customer as accounts last published it: its name and the address its
-- orders ship to (the first SHIPPING address, else the first BILLING one).
CREATE TABLE shop_view.customers (
    customer_id      bigint  PRIMARY KEY CHECK (customer_id > 0),
    version          bigint  NOT NULL CHECK (version > 0),
    deleted          boolean NOT NULL DEFAULT false,
    name             jsonb,
    shipping_address jsonb,
    CHECK (deleted OR name IS NOT NULL)
);

-- A product as its last event left it. A tombstone keeps what was known
-- before the delete (nothing, when the delete is the first event seen).
CREATE TABLE shop_view.products (
    product_id   uuid          PRIMARY KEY,
    version      bigint        NOT NULL CHECK (version > 0),
    deleted      boolean       NOT NULL DEFAULT false,
    name         text,
    price        numeric(12,2) CHECK (price >= 0),
    stock        integer       CHECK (stock >= 0),
    stock_status boolean,
    CHECK (deleted OR (name IS NOT NULL AND price IS NOT NULL
                       AND stock IS NOT NULL AND stock_status IS NOT NULL))
);

-- One row per ProductSold event: (product, aggregate version) is the event,
-- so a redelivered sale is not counted twice. The sales of a deleted order
-- are removed with it (and not added when the delete was applied first).
CREATE TABLE shop_view.product_sold (
    product_id          uuid          NOT NULL,
    version             bigint        NOT NULL CHECK (version > 0),
    event_id            uuid          NOT NULL UNIQUE,
    order_id            uuid          NOT NULL,
    customer_id         bigint        NOT NULL,
    product_name        text          NOT NULL,
    product_price       numeric(12,2) NOT NULL,
    quantity_sold       integer       NOT NULL CHECK (quantity_sold > 0),
    remaining_stock     integer       NOT NULL,
    stock_status        boolean       NOT NULL,
    product_total_price numeric(12,2) NOT NULL,
    PRIMARY KEY (product_id, version)
);

CREATE INDEX product_sold_order ON shop_view.product_sold (order_id);

-- An order as one document (its items, the customer's name and the address
-- it ships to, as they were when it was placed), with the columns it is
-- listed by: newest first, (order_date, order_id) being the cursor. A deleted
-- order is a tombstone without a document, left out of every answer.
CREATE TABLE shop_view.orders (
    order_id    uuid        PRIMARY KEY,
    version     bigint      NOT NULL CHECK (version > 0),
    deleted     boolean     NOT NULL DEFAULT false,
    customer_id bigint      NOT NULL,
    order_date  timestamptz,
    doc         jsonb,
    CHECK (deleted = (doc IS NULL)),
    CHECK (doc IS NULL OR order_date IS NOT NULL)
);

CREATE INDEX orders_newest ON shop_view.orders (order_date DESC, order_id DESC)
    WHERE NOT deleted;
CREATE INDEX orders_of_customer ON shop_view.orders (customer_id, order_date DESC, order_id DESC)
    WHERE NOT deleted;
