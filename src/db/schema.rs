// @generated automatically by Diesel CLI.

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

diesel::allow_tables_to_appear_in_same_query!(projection_offsets, timestamp_records,);
