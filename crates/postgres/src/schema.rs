// @generated automatically by Diesel CLI.

pub mod sql_types {
    #[derive(diesel::sql_types::SqlType)]
    #[diesel(postgres_type(name = "xid8", schema = "pg_catalog"))]
    pub struct Xid8;
}

diesel::table! {
    api_keys (id) {
        id -> Uuid,
        tenant_id -> Nullable<Uuid>,
        name -> Nullable<Text>,
        key_hash -> Text,
        key_prefix -> Text,
        scopes -> Array<Nullable<Text>>,
        created_at -> Timestamptz,
        last_used_at -> Nullable<Timestamptz>,
        revoked_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    audit_chain (id) {
        id -> Int2,
        seq -> Int8,
        hash -> Text,
        sealed_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    audit_checkpoint (id) {
        id -> Int2,
        seq -> Int8,
        hash -> Text,
        purged_at -> Timestamptz,
    }
}

diesel::table! {
    use diesel::sql_types::*;
    use super::sql_types::Xid8;

    audit_logs (id) {
        id -> Uuid,
        tenant_id -> Nullable<Uuid>,
        actor_id -> Text,
        actor_type -> Text,
        action -> Text,
        resource_type -> Text,
        resource_id -> Nullable<Text>,
        before_state -> Nullable<Jsonb>,
        after_state -> Nullable<Jsonb>,
        metadata -> Jsonb,
        created_at -> Timestamptz,
        seq -> Nullable<Int8>,
        hash -> Nullable<Text>,
        xid -> Nullable<Xid8>,
    }
}

diesel::table! {
    config_entries (tenant_id, key) {
        tenant_id -> Uuid,
        key -> Text,
        value -> Nullable<Jsonb>,
        encrypted_value -> Nullable<Text>,
        locked -> Bool,
        sensitive -> Bool,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        version -> Int8,
    }
}

diesel::table! {
    consent_records (id) {
        id -> Uuid,
        tenant_id -> Uuid,
        subject_id -> Text,
        purpose -> Text,
        granted -> Bool,
        granted_at -> Timestamptz,
        revoked_at -> Nullable<Timestamptz>,
        expires_at -> Nullable<Timestamptz>,
        metadata -> Jsonb,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        version -> Int8,
    }
}

diesel::table! {
    encryption_keys_state (singleton) {
        singleton -> Bool,
        active_key_id -> Text,
        rotated_at -> Timestamptz,
    }
}

diesel::table! {
    idempotency_keys (principal, key) {
        principal -> Text,
        key -> Text,
        fingerprint -> Text,
        status -> Int4,
        response_body -> Text,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    permission_policies (id) {
        id -> Uuid,
        tenant_id -> Uuid,
        key -> Text,
        value -> Jsonb,
        mode -> Text,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        version -> Int8,
    }
}

diesel::table! {
    tenants (id) {
        id -> Uuid,
        parent_id -> Nullable<Uuid>,
        name -> Text,
        slug -> Text,
        ancestry_path -> Text,
        depth -> Int4,
        metadata -> Jsonb,
        status -> Text,
        deleted_at -> Nullable<Timestamptz>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        version -> Int8,
    }
}

diesel::table! {
    webhook_controls (webhook_id) {
        webhook_id -> Uuid,
        state -> Text,
        consecutive_failures -> Int4,
        opened_at -> Nullable<Timestamptz>,
        next_probe_at -> Nullable<Timestamptz>,
        cooldown_ms -> Int8,
        rate_next_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    webhook_deliveries (id, event_id) {
        id -> Uuid,
        webhook_id -> Uuid,
        event_id -> Uuid,
        event_type -> Text,
        tenant_id -> Nullable<Uuid>,
        status -> Text,
        attempts -> Int4,
        next_retry_at -> Timestamptz,
        last_error -> Nullable<Text>,
        response_code -> Nullable<Int4>,
        lease_id -> Nullable<Uuid>,
        lease_expires_at -> Nullable<Timestamptz>,
        created_at -> Timestamptz,
        completed_at -> Nullable<Timestamptz>,
        replay_id -> Nullable<Uuid>,
        lane_seq -> Nullable<Int8>,
    }
}

diesel::table! {
    webhook_delivery_attempts (id, event_id) {
        id -> Uuid,
        delivery_id -> Uuid,
        event_id -> Uuid,
        attempt -> Int4,
        status_code -> Nullable<Int4>,
        duration_ms -> Int4,
        error -> Nullable<Text>,
        response_body -> Nullable<Text>,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    webhook_events (id) {
        id -> Uuid,
        event_type -> Text,
        tenant_id -> Nullable<Uuid>,
        payload -> Jsonb,
        created_at -> Timestamptz,
        trace_context -> Nullable<Text>,
    }
}

diesel::table! {
    webhook_replays (id) {
        id -> Uuid,
        webhook_id -> Uuid,
        since -> Timestamptz,
        until -> Timestamptz,
        events -> Nullable<Array<Nullable<Text>>>,
        event_types -> Array<Nullable<Text>>,
        status -> Text,
        cursor_created_at -> Nullable<Timestamptz>,
        cursor_id -> Nullable<Uuid>,
        total -> Int8,
        enqueued -> Int8,
        created_at -> Timestamptz,
        completed_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    webhooks (id) {
        id -> Uuid,
        tenant_id -> Nullable<Uuid>,
        url -> Text,
        events -> Array<Nullable<Text>>,
        secret_encrypted -> Text,
        active -> Bool,
        description -> Nullable<Text>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        version -> Int8,
        rate_limit_per_second -> Nullable<Int4>,
        ordering -> Text,
        disabled_reason -> Nullable<Text>,
        previous_secrets -> Array<Nullable<Text>>,
        previous_secrets_expire_at -> Array<Nullable<Timestamptz>>,
    }
}

diesel::joinable!(api_keys -> tenants (tenant_id));
diesel::joinable!(config_entries -> tenants (tenant_id));
diesel::joinable!(consent_records -> tenants (tenant_id));
diesel::joinable!(permission_policies -> tenants (tenant_id));
diesel::joinable!(webhook_controls -> webhooks (webhook_id));
diesel::joinable!(webhook_deliveries -> webhook_replays (replay_id));
diesel::joinable!(webhook_deliveries -> webhooks (webhook_id));
diesel::joinable!(webhook_replays -> webhooks (webhook_id));
diesel::joinable!(webhooks -> tenants (tenant_id));

diesel::allow_tables_to_appear_in_same_query!(
    api_keys,
    audit_chain,
    audit_checkpoint,
    audit_logs,
    config_entries,
    consent_records,
    encryption_keys_state,
    idempotency_keys,
    permission_policies,
    tenants,
    webhook_controls,
    webhook_deliveries,
    webhook_delivery_attempts,
    webhook_events,
    webhook_replays,
    webhooks,
);
