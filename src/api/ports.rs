//! OMERO's listening ports, derived from `omero.ports.*` exactly as `omero admin rewrite` does
//! it (omero-py `src/omero/plugins/admin.py`, `rewrite`, read at v5.22.1): each port is the
//! text of `omero.ports.prefix` (default empty) followed by the text of `omero.ports.<name>`
//! (defaults: registry 4061, tcp 4063, ssl 4064, ws 4065, wss 4066). OMERO's templates write
//! the two side by side (`-p @omero.ports.prefix@@omero.ports.registry@` in `master.cfg` and
//! `internal.cfg`; Glacier2's client endpoints `'{tp} -p {prefix}{port}'` in `rewrite` itself),
//! so the prefix is text put in front, not a number added: prefix `1` makes tcp `14063`.
//! Read from the source (omero-py, openmicroscopy `etc/templates`), not observed on a server.
//!
//! Every node runs `omero admin rewrite` at start (`omero admin start`, and `omero node <name>
//! start` for a grid worker), so the cluster's `config` moves OMERO's ports and the operator's
//! container ports, Services and the session counter's login follow from the same values.
//! The probes (`omero admin status`, `omero admin ice`) read the rewritten `etc/internal.cfg`
//! and follow by themselves.

use std::collections::BTreeMap;

/// The text put in front of every port number.
pub const PREFIX: &str = "omero.ports.prefix";
/// `omero.client.icetransports`: the transports Glacier2 listens on (OMERO's default `ssl,tcp`;
/// the websocket ports are opened only when it names `ws`/`wss`).
pub const ICE_TRANSPORTS: &str = "omero.client.icetransports";
const DEFAULT_ICE_TRANSPORTS: &str = "ssl,tcp";

/// What listens on a port OMERO configures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Port {
    /// The IceGrid registry's client endpoint.
    Registry,
    /// Glacier2, plain TCP.
    Tcp,
    /// Glacier2, SSL.
    Ssl,
    /// Glacier2, websocket.
    Ws,
    /// Glacier2, secure websocket.
    Wss,
}

impl Port {
    pub const ALL: [Port; 5] = [Port::Registry, Port::Tcp, Port::Ssl, Port::Ws, Port::Wss];
    /// Glacier2's ports, in the order the operator lists them.
    pub const GLACIER2: [Port; 4] = [Port::Tcp, Port::Ssl, Port::Ws, Port::Wss];

    /// The property that sets it.
    pub fn key(self) -> &'static str {
        match self {
            Port::Registry => "omero.ports.registry",
            Port::Tcp => "omero.ports.tcp",
            Port::Ssl => "omero.ports.ssl",
            Port::Ws => "omero.ports.ws",
            Port::Wss => "omero.ports.wss",
        }
    }

    /// `rewrite`'s default when the property is not set.
    pub fn default_text(self) -> &'static str {
        match self {
            Port::Registry => "4061",
            Port::Tcp => "4063",
            Port::Ssl => "4064",
            Port::Ws => "4065",
            Port::Wss => "4066",
        }
    }

    /// Its name in `omero.client.icetransports` (Glacier2's ports only).
    pub fn transport(self) -> Option<&'static str> {
        match self {
            Port::Registry => None,
            Port::Tcp => Some("tcp"),
            Port::Ssl => Some("ssl"),
            Port::Ws => Some("ws"),
            Port::Wss => Some("wss"),
        }
    }

    /// How a message names it.
    pub fn describe(self) -> &'static str {
        match self {
            Port::Registry => "the IceGrid registry port",
            Port::Tcp => "Glacier2's tcp port",
            Port::Ssl => "Glacier2's ssl port",
            Port::Ws => "Glacier2's ws port",
            Port::Wss => "Glacier2's wss port",
        }
    }
}

/// Every port OMERO configures, with the cluster's `omero.ports.*` applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ports(BTreeMap<Port, u16>);

impl Ports {
    pub fn get(&self, port: Port) -> u16 {
        self.0[&port]
    }
}

impl Default for Ports {
    /// OMERO's defaults (no `omero.ports.*` set).
    fn default() -> Self {
        derive(&BTreeMap::new()).expect("OMERO's default ports are ports")
    }
}

/// Why a setting of `omero.ports.*` gives no usable port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortError {
    /// The property to fix.
    pub key: &'static str,
    pub message: String,
}

/// Whether `key` is one of the properties that move OMERO's ports.
pub fn is_port_key(key: &str) -> bool {
    key == PREFIX || Port::ALL.iter().any(|p| p.key() == key)
}

/// The ports `config` (the cluster's) gives, or why some setting gives none. A port must come
/// out as a decimal number from 1 to 65535 without a leading zero (how Ice reads `04063` was
/// not established, so it is not offered).
pub fn derive(config: &BTreeMap<String, String>) -> Result<Ports, Vec<PortError>> {
    let prefix = config.get(PREFIX).map_or("", String::as_str);
    let mut errors = Vec::new();
    if !prefix.bytes().all(|b| b.is_ascii_digit()) {
        errors.push(PortError {
            key: PREFIX,
            message: format!(
                "'{prefix}' is not digits: OMERO writes it in front of every port number (prefix 1 makes the tcp port \
                 14063); use digits or remove it"
            ),
        });
        return Err(errors);
    }
    let mut ports = BTreeMap::new();
    let mut out_of_range_by_prefix = Vec::new();
    for port in Port::ALL {
        let own = config.get(port.key()).map(String::as_str);
        let text = own.unwrap_or(port.default_text());
        if own.is_some() && (text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit())) {
            errors.push(PortError {
                key: port.key(),
                message: format!(
                    "'{text}' is not a port number: write digits (OMERO's default is {}), or remove it",
                    port.default_text()
                ),
            });
            continue;
        }
        let joined = format!("{prefix}{text}");
        match joined.parse::<u32>() {
            Ok(n @ 1..=65535) if !joined.starts_with('0') => {
                ports.insert(port, u16::try_from(n).expect("within u16"));
            }
            _ if !prefix.is_empty() => out_of_range_by_prefix.push(format!("{} {joined}", port.describe())),
            _ => errors.push(PortError {
                key: port.key(),
                message: format!(
                    "'{text}' is not a port from 1 to 65535 without a leading zero: write one, or remove it for OMERO's \
                     default {}",
                    port.default_text()
                ),
            }),
        }
    }
    if !out_of_range_by_prefix.is_empty() {
        errors.push(PortError {
            key: PREFIX,
            message: format!(
                "'{prefix}' makes {}, not a port from 1 to 65535 without a leading zero (OMERO writes the prefix in front \
                 of each port: prefix 1 makes the tcp port 14063): shorten it or set the ports themselves",
                out_of_range_by_prefix.join(", ")
            ),
        });
    }
    if errors.is_empty() { Ok(Ports(ports)) } else { Err(errors) }
}

/// The Glacier2 ports a node opens, from its effective `omero.client.icetransports` (the
/// node's own setting, else the cluster's, else OMERO's `ssl,tcp`), in [`Port::GLACIER2`]
/// order.
pub fn glacier2_ports(
    cluster_config: &BTreeMap<String, String>,
    node_config: &BTreeMap<String, String>,
) -> Vec<Port> {
    let transports = node_config
        .get(ICE_TRANSPORTS)
        .or_else(|| cluster_config.get(ICE_TRANSPORTS))
        .map_or(DEFAULT_ICE_TRANSPORTS, String::as_str);
    let listed: Vec<&str> = transports.split(',').map(str::trim).collect();
    Port::GLACIER2.into_iter().filter(|p| p.transport().is_some_and(|t| listed.contains(&t))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn numbers(ports: &Ports) -> Vec<u16> {
        Port::ALL.iter().map(|p| ports.get(*p)).collect()
    }

    #[test]
    fn without_settings_the_ports_are_omeros_defaults() {
        assert_eq!(numbers(&derive(&config(&[])).unwrap()), [4061, 4063, 4064, 4065, 4066]);
        assert_eq!(Ports::default(), derive(&config(&[])).unwrap());
    }

    /// `rewrite` writes `{prefix}{port}`: the prefix is text in front, not a number added.
    #[test]
    fn the_prefix_is_written_in_front_of_every_port() {
        let ports = derive(&config(&[(PREFIX, "1")])).unwrap();
        assert_eq!(numbers(&ports), [14061, 14063, 14064, 14065, 14066]);
        let ports = derive(&config(&[(PREFIX, "")])).unwrap();
        assert_eq!(numbers(&ports), [4061, 4063, 4064, 4065, 4066], "an empty prefix is no prefix");
    }

    #[test]
    fn a_port_of_its_own_replaces_the_default_and_still_takes_the_prefix() {
        let ports = derive(&config(&[("omero.ports.tcp", "5063")])).unwrap();
        assert_eq!(numbers(&ports), [4061, 5063, 4064, 4065, 4066]);
        let ports = derive(&config(&[(PREFIX, "2"), ("omero.ports.ssl", "5064")])).unwrap();
        assert_eq!(numbers(&ports), [24061, 24063, 25064, 24065, 24066]);
        let ports = derive(&config(&[(PREFIX, "1"), ("omero.ports.registry", "23")])).unwrap();
        assert_eq!(ports.get(Port::Registry), 123);
    }

    #[test]
    fn a_prefix_that_is_not_digits_is_refused() {
        let errors = derive(&config(&[(PREFIX, "x")])).unwrap_err();
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].key, PREFIX);
        assert!(errors[0].message.contains("'x' is not digits"), "{errors:?}");
    }

    #[test]
    fn a_prefix_that_pushes_ports_past_65535_is_refused_naming_them() {
        let errors = derive(&config(&[(PREFIX, "9")])).unwrap_err();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].key, PREFIX);
        assert!(
            errors[0].message.contains("the IceGrid registry port 94061")
                && errors[0].message.contains("Glacier2's wss port 94066"),
            "{errors:?}"
        );
        // 6 keeps 64061 to 64066 within range.
        assert!(derive(&config(&[(PREFIX, "6")])).is_ok());
        let errors = derive(&config(&[(PREFIX, "0")])).unwrap_err();
        assert!(errors[0].message.contains("04063"), "a leading zero: {errors:?}");
    }

    #[test]
    fn a_port_that_is_not_a_port_is_refused_on_its_own_key() {
        for bad in ["", "x", "-1", "4063 ", "70000", "0", "04063"] {
            let errors = derive(&config(&[("omero.ports.tcp", bad)])).unwrap_err();
            assert_eq!(errors.len(), 1, "{bad:?}: {errors:?}");
            assert_eq!(errors[0].key, "omero.ports.tcp", "{bad:?}");
            assert!(errors[0].message.contains("4063"), "names the default: {errors:?}");
        }
    }

    #[test]
    fn glacier2_listens_on_the_transports_named_in_a_fixed_order() {
        let none = config(&[]);
        assert_eq!(glacier2_ports(&none, &none), [Port::Tcp, Port::Ssl], "OMERO's default ssl,tcp");
        let cluster = config(&[(ICE_TRANSPORTS, "wss, ssl,tcp")]);
        assert_eq!(glacier2_ports(&cluster, &none), [Port::Tcp, Port::Ssl, Port::Wss]);
        let node = config(&[(ICE_TRANSPORTS, "ssl")]);
        assert_eq!(glacier2_ports(&cluster, &node), [Port::Ssl], "the node's own setting wins");
    }

    #[test]
    fn port_keys_are_the_six_rewrite_reads() {
        for key in [
            "omero.ports.prefix",
            "omero.ports.registry",
            "omero.ports.tcp",
            "omero.ports.ssl",
            "omero.ports.ws",
            "omero.ports.wss",
        ] {
            assert!(is_port_key(key), "{key}");
        }
        assert!(!is_port_key("omero.ports.other"));
        assert!(!is_port_key("omero.port"));
    }
}
