//! Hosts in a stringified Ice proxy, as OMERO stores each Blitz in `node.conn`, e.g.
//! `7c1e-... -t -e 1.1:tcp -h 10.1.2.3 -p 45678 -t 60000:tcp -h 127.0.0.1 -p 45678 -t 60000`.
//!
//! The pod IP is matched here, not with `LIKE` or a regex in SQL: the text needs Ice's own
//! splitting (`:` between endpoints, quotes around IPv6 hosts, which contain `:` themselves),
//! and one address has several spellings (`fd00::1`, `fd00:0:0:0:0:0:0:1`, a `%zone` suffix).
//! Parsed addresses compare exactly, so 10.1.2.3 never matches 10.1.2.33. Live nodes are few,
//! so reading their `conn` costs nothing.

use std::net::IpAddr;

/// Whether any endpoint of `proxy` has `-h <ip>`.
pub fn has_host(proxy: &str, ip: IpAddr) -> bool {
    hosts(proxy).iter().filter_map(|h| parse_host(h)).any(|h| h == ip.to_canonical())
}

/// The `-h` values of every endpoint of `proxy`, quotes removed.
pub fn hosts(proxy: &str) -> Vec<String> {
    let segments = split(proxy);
    let mut hosts = Vec::new();
    for (index, words) in segments.iter().enumerate() {
        // The first word of the first segment is the identity, whatever it spells.
        let skip = usize::from(index == 0);
        let mut words = words.iter().skip(skip);
        while let Some(word) = words.next() {
            if word == "-h"
                && let Some(host) = words.next()
            {
                hosts.push(host.clone());
            }
        }
    }
    hosts
}

fn parse_host(host: &str) -> Option<IpAddr> {
    // An IPv6 link-local address may carry a zone (`fe80::1%eth0`); the pod IP never does.
    let address = host.split_once('%').map_or(host, |(address, _zone)| address);
    address.parse::<IpAddr>().ok().map(|ip| ip.to_canonical())
}

/// Splits a proxy into `:`-separated segments of blank-separated words, honouring Ice's single
/// and double quotes (a quoted `:` or blank belongs to the word).
fn split(proxy: &str) -> Vec<Vec<String>> {
    let mut segments = Vec::new();
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    for c in proxy.chars() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => word.push(c),
            None => match c {
                '"' | '\'' => {
                    quote = Some(c);
                    in_word = true;
                }
                ':' => {
                    finish_word(&mut words, &mut word, &mut in_word);
                    segments.push(std::mem::take(&mut words));
                }
                c if c.is_whitespace() => finish_word(&mut words, &mut word, &mut in_word),
                c => {
                    word.push(c);
                    in_word = true;
                }
            },
        }
    }
    finish_word(&mut words, &mut word, &mut in_word);
    segments.push(words);
    segments
}

fn finish_word(words: &mut Vec<String>, word: &mut String, in_word: &mut bool) {
    if *in_word {
        words.push(std::mem::take(word));
        *in_word = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BLITZ: &str = "3b4d2c1e-8f0a-4d6b-9c2e-7a1f0e5d4c3b -t -e 1.1:tcp -h 10.1.2.3 -p 45678 -t 60000";

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn finds_the_host_of_each_endpoint() {
        let proxy = "id -t -e 1.1:tcp -h 10.1.2.3 -p 1 -t 60000:ssl -h 127.0.0.1 -p 2:udp -p 3 -h 10.9.9.9";
        assert_eq!(hosts(proxy), ["10.1.2.3", "127.0.0.1", "10.9.9.9"]);
    }

    #[test]
    fn matches_the_exact_address_only() {
        assert!(has_host(BLITZ, ip("10.1.2.3")));
        assert!(!has_host(BLITZ, ip("10.1.2.33")));
        assert!(!has_host(BLITZ, ip("10.1.2.30")));
        assert!(!has_host(&BLITZ.replace("10.1.2.3 ", "10.1.2.33 "), ip("10.1.2.3")));
        assert!(!has_host(&BLITZ.replace("10.1.2.3 ", "110.1.2.3 "), ip("10.1.2.3")));
    }

    #[test]
    fn the_port_or_timeout_never_matches() {
        assert!(!has_host("id:tcp -h 10.0.0.1 -p 45678", ip("0.0.178.110")));
        assert!(hosts("id:tcp -p 45678 -t 60000").is_empty());
    }

    #[test]
    fn ipv6_hosts_are_quoted_and_spelt_variously() {
        let proxy = "id -t -e 1.1:tcp -h \"fd00:10:244::1f\" -p 4064 -t 60000";
        assert_eq!(hosts(proxy), ["fd00:10:244::1f"]);
        assert!(has_host(proxy, ip("fd00:10:244:0:0:0:0:1f")));
        assert!(!has_host(proxy, ip("fd00:10:244::1")));
        assert!(has_host("id:tcp -h 'fe80::1%eth0' -p 1", ip("fe80::1")));
    }

    #[test]
    fn ipv4_mapped_addresses_match_their_ipv4_form() {
        assert!(has_host("id:tcp -h \"::ffff:10.1.2.3\" -p 1", ip("10.1.2.3")));
    }

    #[test]
    fn identity_and_host_names_never_match() {
        assert!(hosts("-h -t:tcp -p 1").is_empty());
        assert!(!has_host("id:tcp -h omero-0.example.org -p 1", ip("10.1.2.3")));
        assert!(!has_host("10.1.2.3 -t:tcp -h 10.0.0.1 -p 1", ip("10.1.2.3")));
        assert!(!has_host("unknown", ip("10.1.2.3")));
        assert!(!has_host("", ip("10.1.2.3")));
    }

    #[test]
    fn a_trailing_h_without_value_is_ignored() {
        assert!(hosts("id:tcp -h").is_empty());
    }

    #[test]
    fn quoted_identity_with_colons_and_blanks_is_one_word() {
        assert_eq!(hosts("\"a b:c\" -t:tcp -h 10.1.2.3 -p 1"), ["10.1.2.3"]);
    }
}
