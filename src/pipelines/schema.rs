// @generated automatically by Diesel CLI.

diesel::table! {
    pipeline_versions (name, version) {
        name -> Text,
        version -> Int4,
        change -> Int8,
        definition -> Jsonb,
        deleted -> Bool,
        applied_at -> Timestamptz,
    }
}

diesel::table! {
    pipelines (name) {
        name -> Text,
        version -> Int4,
        definition -> Jsonb,
        deleted -> Bool,
        updated_at -> Timestamptz,
        created_version -> Int4,
    }
}

diesel::joinable!(pipeline_versions -> pipelines (name));

diesel::allow_tables_to_appear_in_same_query!(pipeline_versions, pipelines,);
