// @generated automatically by Diesel CLI.

pub mod accounts {
    diesel::table! {
        accounts.addresses (customer_id, position) {
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
        accounts.credit_cards (customer_id, position) {
            customer_id -> Int8,
            position -> Int2,
            card_type -> Nullable<Text>,
            description -> Nullable<Text>,
            masked_number -> Text,
            expiration -> Nullable<Text>,
            name_on_card -> Nullable<Text>,
        }
    }

    diesel::table! {
        accounts.customer_contacts (customer_id) {
            customer_id -> Int8,
            primary_phone -> Nullable<Text>,
            secondary_phone -> Nullable<Text>,
            email -> Nullable<Text>,
        }
    }

    diesel::table! {
        accounts.customer_names (customer_id) {
            customer_id -> Int8,
            title -> Nullable<Text>,
            first_name -> Text,
            middle_name -> Nullable<Text>,
            last_name -> Text,
            suffix -> Nullable<Text>,
        }
    }

    diesel::table! {
        accounts.customers (id) {
            id -> Int8,
            version -> Int8,
            created_at -> Timestamptz,
            updated_at -> Timestamptz,
        }
    }

    diesel::joinable!(addresses -> customers (customer_id));
    diesel::joinable!(credit_cards -> customers (customer_id));
    diesel::joinable!(customer_contacts -> customers (customer_id));
    diesel::joinable!(customer_names -> customers (customer_id));

    diesel::allow_tables_to_appear_in_same_query!(
        addresses,
        credit_cards,
        customer_contacts,
        customer_names,
        customers,
    );
}
