//! EnOS's topic rules: whose namespace a topic is in, what a device may
//! publish and subscribe to, and what the broker delivers to it unasked.
//!
//! A device's namespace is `/sys/{pk}/{dk}/…` and `/ext/session/{pk}/{dk}/…`.
//! A device publishes and subscribes only inside its own namespace and
//! those of its logged-in sub-devices. Downstream topics are delivered to
//! the device's session without a SUBSCRIBE, as EnOS does (the official
//! SDKs only subscribe to the `_reply` topics of what they publish):
//!
//! | downstream topic | what |
//! |---|---|
//! | `/sys/{pk}/{dk}/thing/service/{id}` (not `…_reply`) | service calls, `measurepoint/set` |
//! | `/sys/{pk}/{dk}/traffic/control` | EnOS's flow-control notice (the console publishes it in tests) |
//! | `/ext/session/{pk}/{dk}/thing/activate/info` | the dynamic activation push |
//! | `/ext/session/{pk}/{dk}/combine/{x}` (not `login`, `login/batch`, `logout`, `…_reply`) | pushes to a gateway |

use enos_sign_core::{DeviceKey, ProductKey};

use crate::devices::DeviceId;

/// The device whose namespace `topic` is in, if any.
pub(crate) fn namespace_of(topic: &str) -> Option<DeviceId> {
    let (pk, dk, _) = split(topic)?;
    Some(DeviceId::new(
        ProductKey::new(pk).ok()?,
        DeviceKey::new(dk).ok()?,
    ))
}

/// `(pk, dk, rest)` of `/sys/{pk}/{dk}/{rest}` or
/// `/ext/session/{pk}/{dk}/{rest}`.
fn split(topic: &str) -> Option<(&str, &str, &str)> {
    let rest = topic
        .strip_prefix("/sys/")
        .or_else(|| topic.strip_prefix("/ext/session/"))?;
    let (pk, rest) = rest.split_once('/')?;
    let (dk, rest) = rest.split_once('/')?;
    Some((pk, dk, rest))
}

/// Whether EnOS delivers `topic` to the session of the device whose
/// namespace it is in, without a SUBSCRIBE.
pub(crate) fn is_downstream(topic: &str) -> bool {
    let Some((_, _, rest)) = split(topic) else {
        return false;
    };
    if rest.ends_with("_reply") {
        return false;
    }
    if topic.starts_with("/sys/") {
        return rest == "traffic/control"
            || rest
                .strip_prefix("thing/service/")
                .is_some_and(|id| !id.is_empty());
    }
    if rest == "thing/activate/info" {
        return true;
    }
    rest.strip_prefix("combine/")
        .is_some_and(|push| !push.is_empty() && !matches!(push, "login" | "login/batch" | "logout"))
}

/// Whether `topic` is `device`'s reply to an activation push.
pub(crate) fn is_activation_reply(topic: &str, device: &DeviceId) -> bool {
    split(topic).is_some_and(|(pk, dk, rest)| {
        topic.starts_with("/ext/session/")
            && pk == device.product_key.as_str()
            && dk == device.device_key.as_str()
            && rest == "thing/activate/info_reply"
    })
}

/// The namespace prefixes of `device`, to test subscription filters.
fn prefixes(device: &DeviceId) -> [String; 2] {
    [
        format!("/sys/{}/{}/", device.product_key, device.device_key),
        format!("/ext/session/{}/{}/", device.product_key, device.device_key),
    ]
}

/// The filters that cover `device`'s whole namespace, which the front
/// places for a device's session so that its downstream arrives unasked.
pub(crate) fn namespace_filters(device: &DeviceId) -> [String; 2] {
    prefixes(device).map(|prefix| format!("{prefix}#"))
}

/// Whether a subscription `filter` stays inside the namespace of one of
/// `devices`: it must start with a namespace prefix, with no wildcard
/// before the end of the prefix. `/sys/+/+/…` or `#` are refused.
pub(crate) fn filter_allowed<'a>(
    filter: &str,
    devices: impl IntoIterator<Item = &'a DeviceId>,
) -> bool {
    if !rumqttd::protocol::valid_filter(filter) {
        return false;
    }
    devices.into_iter().any(|device| {
        prefixes(device)
            .iter()
            .any(|p| filter.starts_with(p.as_str()))
    })
}

/// Whether the console may publish on `topic`: what the cloud sends, that
/// is a device's downstream topics and the `_reply` to a device's request.
pub(crate) fn console_may_publish(topic: &str) -> bool {
    namespace_of(topic).is_some() && (is_downstream(topic) || topic.ends_with("_reply"))
}

/// Whether `topic` matches `filter` (MQTT wildcards).
pub(crate) fn matches(topic: &str, filter: &str) -> bool {
    rumqttd::protocol::matches(topic, filter)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(pk: &str, dk: &str) -> DeviceId {
        DeviceId::new(pk.parse().expect("pk"), dk.parse().expect("dk"))
    }

    #[test]
    fn namespaces() {
        assert_eq!(
            namespace_of("/sys/pk/dk/thing/measurepoint/post"),
            Some(id("pk", "dk"))
        );
        assert_eq!(
            namespace_of("/ext/session/pk/dk/combine/login"),
            Some(id("pk", "dk"))
        );
        for other in [
            "/sys/pk",
            "/sys/pk/dk",
            "/other/pk/dk/x",
            "sys/pk/dk/x",
            "/sys/p k/dk/x",
        ] {
            assert_eq!(namespace_of(other), None, "{other}");
        }
    }

    #[test]
    fn downstream_topics() {
        for down in [
            "/sys/pk/dk/thing/service/restart",
            "/sys/pk/dk/thing/service/measurepoint/set",
            "/ext/session/pk/dk/thing/activate/info",
            "/ext/session/pk/dk/combine/disable",
            // #28 item 5: EnOS's flow-control notice reaches the device unasked.
            "/sys/pk/dk/traffic/control",
        ] {
            assert!(is_downstream(down), "{down}");
        }
        for up in [
            "/sys/pk/dk/thing/service/restart_reply",
            "/sys/pk/dk/traffic/control_reply",
            "/sys/pk/dk/thing/measurepoint/post",
            "/sys/pk/dk/thing/measurepoint/post_reply",
            "/sys/pk/dk/thing/service/",
            "/ext/session/pk/dk/combine/login",
            "/ext/session/pk/dk/combine/login/batch",
            "/ext/session/pk/dk/combine/logout",
            "/ext/session/pk/dk/combine/login_reply",
            "/ext/session/pk/dk/thing/activate/info_reply",
            "/other/thing/service/x",
        ] {
            assert!(!is_downstream(up), "{up}");
        }
    }

    #[test]
    fn activation_replies() {
        let device = id("pk", "dk");
        assert!(is_activation_reply(
            "/ext/session/pk/dk/thing/activate/info_reply",
            &device
        ));
        for other in [
            "/ext/session/pk/dk/thing/activate/info",
            "/ext/session/pk/dk2/thing/activate/info_reply",
            "/sys/pk/dk/thing/activate/info_reply",
            "/ext/session/pk/dk/thing/activate/info_reply/x",
        ] {
            assert!(!is_activation_reply(other, &device), "{other}");
        }
    }

    #[test]
    fn subscriptions_stay_inside_a_namespace() {
        let own = [id("pk", "dk")];
        for ok in [
            "/sys/pk/dk/#",
            "/sys/pk/dk/thing/service/+",
            "/ext/session/pk/dk/combine/login_reply",
        ] {
            assert!(filter_allowed(ok, &own), "{ok}");
        }
        for refused in [
            "#",
            "/sys/#",
            "/sys/+/+/thing/service/#",
            "/sys/pk/+/thing/#",
            "/sys/pk/dk",
            "/sys/pk/dk2/#",
            "/sys/pk/other/thing/service/x",
            "/sys/pk/dk/#/x",
        ] {
            assert!(!filter_allowed(refused, &own), "{refused}");
        }
    }

    #[test]
    fn the_console_publishes_what_the_cloud_sends() {
        assert!(console_may_publish("/sys/pk/dk/thing/service/restart"));
        assert!(console_may_publish(
            "/sys/pk/dk/thing/measurepoint/post_reply"
        ));
        assert!(!console_may_publish("/sys/pk/dk/thing/measurepoint/post"));
        assert!(!console_may_publish("/elsewhere/x_reply"));
    }
}
