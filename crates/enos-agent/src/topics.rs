//! EnOS topic names and the JSON envelope, for one device.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::config::{DownstreamConfig, UpstreamRoute, UpstreamTarget};

/// Whether `topic` matches the MQTT `filter` (`+` one level, `#` the rest
/// and its parent; `$`-topics match no wildcard), as rumqttc's `matches`
/// does — which panics when a topic starts with a multi-byte character (it
/// slices the first byte), and local topics come from any local client.
pub fn filter_matches(topic: &str, filter: &str) -> bool {
    if topic.starts_with('$') {
        return false;
    }
    let mut topics = topic.split('/');
    for f in filter.split('/') {
        if f == "#" {
            return true;
        }
        match topics.next() {
            Some("#") | None => return false,
            Some(_) if f == "+" => continue,
            Some(t) if f != t => return false,
            Some(_) => continue,
        }
    }
    topics.next().is_none()
}

/// The EnOS topics of one device (gateway).
#[derive(Debug, Clone)]
pub struct DeviceTopics {
    /// `/sys/{pk}/{dk}/thing/`, the prefix of device topics.
    sys: String,
    /// `/ext/session/{pk}/{dk}/`, the prefix of session (sub-device) topics.
    session: String,
}

impl DeviceTopics {
    /// Topics for `product_key`/`device_key`.
    pub fn new(product_key: &str, device_key: &str) -> Self {
        DeviceTopics {
            sys: format!("/sys/{product_key}/{device_key}/thing/"),
            session: format!("/ext/session/{product_key}/{device_key}/"),
        }
    }

    /// `/ext/session/{pk}/{dk}/thing/activate/info`: EnOS pushes the new
    /// device secret here after an activation login.
    pub fn activate_info(&self) -> String {
        format!("{}thing/activate/info", self.session)
    }

    /// `/ext/session/{pk}/{dk}/thing/activate/info_reply`.
    pub fn activate_info_reply(&self) -> String {
        format!("{}thing/activate/info_reply", self.session)
    }

    /// `/ext/session/{pk}/{dk}/combine/login/batch`.
    pub fn combine_login_batch(&self) -> String {
        format!("{}combine/login/batch", self.session)
    }

    /// `/ext/session/{pk}/{dk}/combine/login/batch_reply`.
    pub fn combine_login_batch_reply(&self) -> String {
        format!("{}combine/login/batch_reply", self.session)
    }

    /// `/sys/{pk}/{dk}/traffic/control`: EnOS's flow-control notice.
    pub fn traffic_control(&self) -> String {
        format!("{}traffic/control", self.sys.trim_end_matches("thing/"))
    }

    /// `/sys/{pk}/{dk}/thing/measurepoint/post`.
    pub fn measurepoint_post(&self) -> String {
        format!("{}measurepoint/post", self.sys)
    }

    /// `/sys/{pk}/{dk}/thing/measurepoint/resume/batch`: late
    /// measurepoints of the gateway and its sub-devices, many at once.
    pub fn measurepoint_resume_batch(&self) -> String {
        format!("{}measurepoint/resume/batch", self.sys)
    }

    /// `/sys/{pk}/{dk}/thing/event/{event_id}/post`.
    pub fn event_post(&self, event_id: &str) -> String {
        format!("{}event/{event_id}/post", self.sys)
    }

    /// The filter for service calls and measurepoint-set commands:
    /// `/sys/{pk}/{dk}/thing/service/+` and `…/service/measurepoint/set`.
    pub fn service_filters(&self) -> [String; 2] {
        [
            format!("{}service/+", self.sys),
            format!("{}service/measurepoint/set", self.sys),
        ]
    }

    /// The part of a downstream service topic after `…/thing/service/`:
    /// a service id or `measurepoint/set`. `None` for other topics and for
    /// our own `_reply`s echoed back by the broker.
    pub fn service_rest<'t>(&self, topic: &'t str) -> Option<&'t str> {
        let rest = topic.strip_prefix(&self.sys)?.strip_prefix("service/")?;
        (!rest.is_empty() && !rest.ends_with("_reply")).then_some(rest)
    }

    /// `/sys/{pk}/{dk}/thing/service/{rest}_reply`.
    pub fn service_reply(&self, rest: &str) -> String {
        format!("{}service/{rest}_reply", self.sys)
    }

    /// `/ext/session/{pk}/{dk}/combine/login`.
    pub fn combine_login(&self) -> String {
        format!("{}combine/login", self.session)
    }

    /// `/ext/session/{pk}/{dk}/combine/login_reply`.
    pub fn combine_login_reply(&self) -> String {
        format!("{}combine/login_reply", self.session)
    }

    /// The EnOS topic and envelope method of an upstream route.
    pub fn upstream_target(&self, route: &UpstreamRoute) -> (String, Option<String>) {
        match route.target {
            UpstreamTarget::MeasurepointPost => (
                self.measurepoint_post(),
                Some("thing.measurepoint.post".to_owned()),
            ),
            UpstreamTarget::EventPost => {
                let id = route.event_id.as_deref().unwrap_or_default();
                (self.event_post(id), Some(format!("thing.event.{id}.post")))
            }
            UpstreamTarget::Raw => (route.enos_topic.clone().unwrap_or_default(), None),
        }
    }
}

/// Maps downstream topics to local ones and local replies back.
#[derive(Debug, Clone)]
pub struct DownstreamMap {
    /// `{local_prefix}/`.
    local_prefix: String,
    /// `{local_reply_prefix}/`.
    local_reply_prefix: String,
}

impl DownstreamMap {
    /// From the bridge config.
    pub fn new(config: &DownstreamConfig) -> Self {
        DownstreamMap {
            local_prefix: format!("{}/", config.local_prefix),
            local_reply_prefix: format!("{}/", config.local_reply_prefix),
        }
    }

    /// The local topic a service call with `rest` is delivered on.
    pub fn local_topic(&self, rest: &str) -> String {
        format!("{}{rest}", self.local_prefix)
    }

    /// The local filter replies are read from.
    pub fn local_reply_filter(&self) -> String {
        format!("{}#", self.local_reply_prefix)
    }

    /// The `rest` of a local reply topic, if it is one.
    pub fn reply_rest<'t>(&self, local_topic: &'t str) -> Option<&'t str> {
        local_topic
            .strip_prefix(&self.local_reply_prefix)
            .filter(|r| !r.is_empty())
    }
}

/// Message ids for envelopes this agent creates: unique per process run.
#[derive(Debug, Default)]
pub struct MessageIds(
    /// The last id handed out.
    AtomicU64,
);

impl MessageIds {
    /// Ids from `first` on: with a spool, its next sequence number, so an
    /// id never repeats one a spooled message still carries.
    pub fn starting_at(first: u64) -> Self {
        MessageIds(AtomicU64::new(first.saturating_sub(1)))
    }

    /// The next id, as EnOS expects it: a string.
    pub fn next(&self) -> String {
        (self.0.fetch_add(1, Ordering::Relaxed) + 1).to_string()
    }
}

/// `{"id": id, "version": "1.0", "method": method, "params": params}`.
pub fn envelope(id: &str, method: &str, params: serde_json::Value) -> Vec<u8> {
    let value = serde_json::json!({
        "id": id,
        "version": "1.0",
        "method": method,
        "params": params,
    });
    // Serialising a Value cannot fail.
    serde_json::to_vec(&value).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_follow_the_enos_layout() {
        let t = DeviceTopics::new("pk1", "dk1");
        assert_eq!(
            t.measurepoint_post(),
            "/sys/pk1/dk1/thing/measurepoint/post"
        );
        assert_eq!(t.event_post("alarm"), "/sys/pk1/dk1/thing/event/alarm/post");
        assert_eq!(
            t.combine_login_reply(),
            "/ext/session/pk1/dk1/combine/login_reply"
        );
        assert_eq!(
            t.service_rest("/sys/pk1/dk1/thing/service/reboot"),
            Some("reboot")
        );
        assert_eq!(
            t.service_rest("/sys/pk1/dk1/thing/service/measurepoint/set"),
            Some("measurepoint/set")
        );
        assert_eq!(
            t.service_rest("/sys/pk1/dk1/thing/service/reboot_reply"),
            None
        );
        assert_eq!(t.service_rest("/sys/pk2/dk1/thing/service/reboot"), None);
        assert_eq!(
            t.service_reply("measurepoint/set"),
            "/sys/pk1/dk1/thing/service/measurepoint/set_reply"
        );
        let f = t.service_filters();
        assert!(filter_matches("/sys/pk1/dk1/thing/service/reboot", &f[0]));
        assert!(filter_matches(
            "/sys/pk1/dk1/thing/service/measurepoint/set",
            &f[1]
        ));
    }

    #[test]
    fn envelope_has_the_four_fields() {
        let bytes = envelope("7", "thing.measurepoint.post", serde_json::json!({"t": 1}));
        let v: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
        assert_eq!(v["id"], "7");
        assert_eq!(v["version"], "1.0");
        assert_eq!(v["method"], "thing.measurepoint.post");
        assert_eq!(v["params"]["t"], 1);
    }

    #[test]
    fn filters_match_as_rumqttc_and_never_panic_on_unicode() {
        let topics = ["a/b/c", "a/b", "a", "/a/b", "a//b", "$SYS/x", "", "a/b/c/d"];
        let filters = [
            "a/b/c", "a/+/c", "a/#", "#", "+", "+/+", "/+/b", "a/b/c/#", "a/+", "$SYS/#", "",
        ];
        for t in topics {
            for f in filters {
                assert_eq!(
                    filter_matches(t, f),
                    rumqttc::matches(t, f),
                    "{t:?} ~ {f:?}"
                );
            }
        }
        // rumqttc::matches panics on these (a multi-byte first character).
        assert!(filter_matches("\u{e9}t\u{e9}/x", "#"));
        assert!(filter_matches("\u{e9}t\u{e9}/x", "\u{e9}t\u{e9}/+"));
        assert!(!filter_matches("\u{1f600}/reply", "gateway/#"));
    }
}
