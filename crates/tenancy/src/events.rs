//! The events tenancy emits: their names and the catalogue the application registers with
//! the webhooks domain and documents in its API.

use stratum_core::{EventCatalogue, EventSpec, EventType};

/// A tenant was created.
pub const TENANT_CREATED: EventType = EventType::from_static("tenant.created");
/// A tenant's name, slug or metadata changed.
pub const TENANT_UPDATED: EventType = EventType::from_static("tenant.updated");
/// A tenant was archived.
pub const TENANT_DELETED: EventType = EventType::from_static("tenant.deleted");
/// A tenant moved under another parent.
pub const TENANT_MOVED: EventType = EventType::from_static("tenant.moved");
/// A config key was set.
pub const CONFIG_UPDATED: EventType = EventType::from_static("config.updated");
/// A config key was removed.
pub const CONFIG_DELETED: EventType = EventType::from_static("config.deleted");
/// A permission policy was created.
pub const PERMISSION_CREATED: EventType = EventType::from_static("permission.created");
/// A permission policy changed.
pub const PERMISSION_UPDATED: EventType = EventType::from_static("permission.updated");
/// A permission policy was removed.
pub const PERMISSION_DELETED: EventType = EventType::from_static("permission.deleted");

/// Every event tenancy emits, described, in the order the API documents them.
pub const EVENTS: [EventSpec; 9] = [
    EventSpec {
        event_type: TENANT_CREATED,
        description: "A tenant was created.",
    },
    EventSpec {
        event_type: TENANT_UPDATED,
        description: "A tenant's name, slug or metadata changed.",
    },
    EventSpec {
        event_type: TENANT_DELETED,
        description: "A tenant was archived.",
    },
    EventSpec {
        event_type: TENANT_MOVED,
        description: "A tenant moved under another parent.",
    },
    EventSpec {
        event_type: CONFIG_UPDATED,
        description: "A config key was set.",
    },
    EventSpec {
        event_type: CONFIG_DELETED,
        description: "A config key was removed.",
    },
    EventSpec {
        event_type: PERMISSION_CREATED,
        description: "A permission policy was created.",
    },
    EventSpec {
        event_type: PERMISSION_UPDATED,
        description: "A permission policy changed.",
    },
    EventSpec {
        event_type: PERMISSION_DELETED,
        description: "A permission policy was removed.",
    },
];

/// A catalogue of tenancy's events, to register with the webhooks domain.
///
/// ```
/// use stratum_tenancy::events::{catalogue, TENANT_MOVED};
///
/// let events = catalogue();
/// assert_eq!(events.events().len(), 9);
/// assert!(events.contains(&TENANT_MOVED));
/// ```
pub fn catalogue() -> EventCatalogue {
    EventCatalogue::new().with_all(&EVENTS)
}
