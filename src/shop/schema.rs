// @generated automatically by Diesel CLI.

pub mod shop {
    diesel::table! {
        shop.customer_addresses (customer_id, position) {
            customer_id -> Int8,
            position -> Int2,
            address_type -> Text,
            description -> Nullable<Text>,
            address1 -> Text,
            address2 -> Nullable<Text>,
            city -> Text,
            state -> Nullable<Text>,
            postal_code -> Nullable<Text>,
        }
    }

    diesel::table! {
        shop.customers (id) {
            id -> Int8,
            version -> Int8,
            deleted -> Bool,
            title -> Nullable<Text>,
            first_name -> Nullable<Text>,
            middle_name -> Nullable<Text>,
            last_name -> Nullable<Text>,
            suffix -> Nullable<Text>,
        }
    }

    diesel::table! {
        shop.order_items (order_id, line) {
            order_id -> Uuid,
            line -> Int2,
            product_id -> Uuid,
            product_name -> Text,
            quantity -> Int4,
            price -> Numeric,
        }
    }

    diesel::table! {
        shop.orders (id) {
            id -> Uuid,
            customer_id -> Int8,
            order_date -> Timestamptz,
            ship_address_type -> Text,
            ship_description -> Nullable<Text>,
            ship_address1 -> Text,
            ship_address2 -> Nullable<Text>,
            ship_city -> Text,
            ship_state -> Nullable<Text>,
            ship_postal_code -> Nullable<Text>,
        }
    }

    diesel::table! {
        shop.products (id) {
            id -> Uuid,
            name -> Text,
            price -> Numeric,
            stock -> Int4,
            created_at -> Timestamptz,
            updated_at -> Timestamptz,
        }
    }

    diesel::joinable!(customer_addresses -> customers (customer_id));
    diesel::joinable!(order_items -> orders (order_id));
    diesel::joinable!(orders -> customers (customer_id));

    diesel::allow_tables_to_appear_in_same_query!(
        customer_addresses,
        customers,
        order_items,
        orders,
        products,
    );
}
