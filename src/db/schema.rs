// @generated automatically by Diesel CLI.

diesel::table! {
    idempotency_keys (key) {
        key -> Text,
        command_id -> Uuid,
        event_timestamp -> Timestamptz,
        requested_timestamp -> Nullable<Timestamptz>,
        partition -> Nullable<Int4>,
        log_offset -> Nullable<Int8>,
        created_at -> Timestamptz,
        completed_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    projection_offsets (group_id, topic, partition) {
        group_id -> Text,
        topic -> Text,
        partition -> Int4,
        next_offset -> Int8,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    timestamp_records (id) {
        id -> Uuid,
        event_timestamp -> Timestamptz,
        created_at -> Timestamptz,
    }
}

diesel::allow_tables_to_appear_in_same_query!(
    idempotency_keys,
    projection_offsets,
    timestamp_records,
);
