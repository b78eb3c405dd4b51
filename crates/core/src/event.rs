//! Event names: the validated [`EventType`] and the [`EventCatalogue`] of the events a
//! deployment emits. The catalogue is open: each domain that emits events owns its names
//! as constants and registers them where they are needed (the webhooks domain validates
//! subscriptions against it, the API documents it).

use std::borrow::Cow;
use std::fmt;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Longest accepted event name.
pub const MAX_EVENT_TYPE_LEN: usize = 64;

/// An event name: two or more dot-separated segments, each a lowercase ASCII letter
/// followed by lowercase letters, digits or `_` (`tenant.created`, `billing.invoice_paid`),
/// at most [`MAX_EVENT_TYPE_LEN`] bytes. Serializes as the bare string.
///
/// ```
/// use stratum_core::EventType;
///
/// const INVOICE_PAID: EventType = EventType::from_static("billing.invoice_paid");
/// assert_eq!(INVOICE_PAID.as_str(), "billing.invoice_paid");
/// assert_eq!(EventType::parse("billing.invoice_paid").unwrap(), INVOICE_PAID);
/// assert!(EventType::parse("Billing.Paid").is_err());
/// assert!(EventType::parse("paid").is_err());
/// assert_eq!(serde_json::to_string(&INVOICE_PAID).unwrap(), "\"billing.invoice_paid\"");
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct EventType(Cow<'static, str>);

/// A string that is not a valid event name.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
#[error("'{0}' is not an event name (dot-separated lowercase segments, e.g. tenant.created)")]
pub struct EventTypeError(pub String);

/// Whether `name` has the shape of an event name; usable in constants.
const fn well_formed(name: &str) -> bool {
    let b = name.as_bytes();
    if b.is_empty() || b.len() > MAX_EVENT_TYPE_LEN {
        return false;
    }
    let mut segments = 1;
    let mut segment_start = true;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if segment_start {
            if !c.is_ascii_lowercase() {
                return false;
            }
            segment_start = false;
        } else if c == b'.' {
            segments += 1;
            segment_start = true;
        } else if !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_') {
            return false;
        }
        i += 1;
    }
    !segment_start && segments >= 2
}

impl EventType {
    /// Validates `name`.
    pub fn parse(name: &str) -> Result<Self, EventTypeError> {
        if well_formed(name) {
            Ok(Self(Cow::Owned(name.to_owned())))
        } else {
            Err(EventTypeError(name.to_owned()))
        }
    }

    /// A constant event name; a malformed `name` fails the build (or panics when called
    /// outside a constant).
    pub const fn from_static(name: &'static str) -> Self {
        assert!(well_formed(name), "malformed event name");
        Self(Cow::Borrowed(name))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EventType({})", self.0)
    }
}

impl TryFrom<String> for EventType {
    type Error = EventTypeError;

    fn try_from(name: String) -> Result<Self, Self::Error> {
        if well_formed(&name) {
            Ok(Self(Cow::Owned(name)))
        } else {
            Err(EventTypeError(name))
        }
    }
}

impl From<EventType> for String {
    fn from(e: EventType) -> Self {
        e.0.into_owned()
    }
}

impl PartialEq<str> for EventType {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<String> for EventType {
    fn eq(&self, other: &String) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for EventType {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// A described event of a catalogue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventSpec {
    /// The name.
    pub event_type: EventType,
    /// What happened, for documentation.
    pub description: &'static str,
}

/// The events a deployment emits, in registration order, each once.
///
/// ```
/// use stratum_core::{EventCatalogue, EventType};
///
/// const SHIPPED: EventType = EventType::from_static("order.shipped");
/// let catalogue = EventCatalogue::new()
///     .with(SHIPPED, "An order left the warehouse.")
///     .with(SHIPPED, "Registered twice, listed once.");
/// assert!(catalogue.contains(&SHIPPED));
/// assert!(!catalogue.contains(&EventType::from_static("order.lost")));
/// assert_eq!(catalogue.names(), vec!["order.shipped"]);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventCatalogue {
    events: Vec<EventSpec>,
}

impl EventCatalogue {
    /// An empty catalogue.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `event` (a second registration of a name is ignored).
    pub fn with(mut self, event: EventType, description: &'static str) -> Self {
        self.register(event, description);
        self
    }

    /// Registers every event of `specs`.
    pub fn with_all<'a>(mut self, specs: impl IntoIterator<Item = &'a EventSpec>) -> Self {
        for s in specs {
            self.register(s.event_type.clone(), s.description);
        }
        self
    }

    /// Registers `event` (a second registration of a name is ignored).
    pub fn register(&mut self, event: EventType, description: &'static str) {
        if !self.contains(&event) {
            self.events.push(EventSpec {
                event_type: event,
                description,
            });
        }
    }

    /// Whether `event` is registered.
    pub fn contains(&self, event: &EventType) -> bool {
        self.events.iter().any(|s| &s.event_type == event)
    }

    /// The registered events.
    pub fn events(&self) -> &[EventSpec] {
        &self.events
    }

    /// The registered names.
    pub fn names(&self) -> Vec<&str> {
        self.events.iter().map(|s| s.event_type.as_str()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated() {
        for ok in ["tenant.created", "a.b", "billing.invoice_paid", "x1.y_2.z"] {
            assert_eq!(EventType::parse(ok).unwrap().as_str(), ok);
        }
        for bad in [
            "",
            "tenant",
            "Tenant.created",
            "tenant.",
            ".created",
            "tenant..created",
            "tenant.1created",
            "tenant.cré",
            "tenant-created.x",
            "tenant.created ",
        ] {
            assert!(EventType::parse(bad).is_err(), "{bad:?}");
        }
        let long = format!("a.{}", "b".repeat(MAX_EVENT_TYPE_LEN));
        assert!(EventType::parse(&long).is_err());
    }

    #[test]
    fn serde_is_the_bare_string_and_validates() {
        let e = EventType::from_static("tenant.moved");
        assert_eq!(
            serde_json::to_value(&e).unwrap(),
            serde_json::json!("tenant.moved")
        );
        let back: EventType = serde_json::from_str("\"tenant.moved\"").unwrap();
        assert_eq!(back, e);
        assert!(serde_json::from_str::<EventType>("\"Tenant\"").is_err());
    }

    #[test]
    #[should_panic(expected = "malformed event name")]
    fn a_malformed_constant_is_refused() {
        let name: &'static str = Box::leak(String::from("NOPE").into_boxed_str());
        let _ = EventType::from_static(name);
    }
}
