// @generated automatically by Diesel CLI.

pub mod outbox {
    diesel::table! {
        outbox.aggregate_versions (aggregate_type, aggregate_id) {
            aggregate_type -> Text,
            aggregate_id -> Text,
            version -> Int8,
        }
    }

    diesel::table! {
        outbox.events (id) {
            id -> Int8,
            event_id -> Uuid,
            aggregate_type -> Text,
            aggregate_id -> Text,
            aggregate_version -> Int8,
            event_type -> Text,
            correlation_id -> Text,
            payload -> Text,
            created_at -> Timestamptz,
            published_at -> Nullable<Timestamptz>,
        }
    }

    diesel::table! {
        outbox.published_versions (aggregate_type, aggregate_id) {
            aggregate_type -> Text,
            aggregate_id -> Text,
            version -> Int8,
        }
    }

    diesel::allow_tables_to_appear_in_same_query!(aggregate_versions, events, published_versions,);
}
