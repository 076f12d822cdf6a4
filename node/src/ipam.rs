//! Fake pod IPs: node number i owns the /24 at 10.244.0.0 + i*256 (10.244.<i>.0/24 for the
//! first 256 nodes, continuing into 10.245.0.0 and beyond), hosts .1 to .254 - unless the Node
//! has an IPv4 /24 in spec.podCIDR (node IPAM), which is then used instead.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use anyhow::{bail, Result};

const BASE: u32 = u32::from_be_bytes([10, 244, 0, 0]);

#[derive(Debug)]
pub struct PodIps {
    net: u32,
    by_uid: HashMap<String, u8>,
    used: [bool; 256],
    /// Next host number to try: allocation goes round the range so an IP just freed is not
    /// handed out again at once.
    next: u8,
}

impl PodIps {
    pub fn for_node(index: usize) -> Result<PodIps> {
        let Some(net) = u32::try_from(index).ok().and_then(|i| i.checked_mul(256)).and_then(|o| BASE.checked_add(o)) else {
            bail!("node number {index} has no pod IP range");
        };
        Ok(PodIps { net, by_uid: HashMap::new(), used: [false; 256], next: 1 })
    }

    /// The range of an IPv4 /24 pod CIDR ("10.244.3.0/24"); None for anything else.
    pub fn for_cidr(cidr: &str) -> Option<PodIps> {
        let (a, m) = cidr.split_once('/')?;
        let net = u32::from(a.parse::<Ipv4Addr>().ok()?);
        (m == "24" && net & 0xff == 0).then(|| PodIps { net, by_uid: HashMap::new(), used: [false; 256], next: 1 })
    }

    /// Moves to `cidr`'s range (see [`PodIps::for_cidr`]) while no pod holds an IP of ours;
    /// true if the range is `cidr`'s afterwards.
    pub fn adopt_cidr(&mut self, cidr: &str) -> bool {
        let Some(new) = PodIps::for_cidr(cidr) else { return false };
        if new.net == self.net {
            return true;
        }
        if !self.by_uid.is_empty() {
            return false;
        }
        *self = new;
        true
    }

    fn host_of(&self, ip: &str) -> Option<u8> {
        let a: Ipv4Addr = ip.parse().ok()?;
        let a = u32::from(a);
        let host = (a & 0xff) as u8;
        (a & !0xff == self.net && (1..=254).contains(&host)).then_some(host)
    }

    fn addr(&self, host: u8) -> String {
        Ipv4Addr::from(self.net | host as u32).to_string()
    }

    /// The pod's IP: the one it has, else `current` (what its status says, after a restart)
    /// if that is ours and free, else a new one.
    pub fn ip_of(&mut self, uid: &str, current: Option<&str>) -> Result<String> {
        if let Some(h) = self.by_uid.get(uid) {
            return Ok(self.addr(*h));
        }
        if let Some(h) = current.and_then(|c| self.host_of(c)).filter(|h| !self.used[*h as usize]) {
            return Ok(self.take(uid, h));
        }
        for k in 0..254u32 {
            let h = ((self.next as u32 - 1 + k) % 254 + 1) as u8;
            if !self.used[h as usize] {
                self.next = if h == 254 { 1 } else { h + 1 };
                return Ok(self.take(uid, h));
            }
        }
        bail!("all 254 pod IPs of {} are in use", self.addr(0))
    }

    /// Records an IP a pod already has (found at start-up), unless taken.
    pub fn claim(&mut self, uid: &str, ip: &str) {
        if let Some(h) = self.host_of(ip).filter(|h| !self.used[*h as usize]) {
            if !self.by_uid.contains_key(uid) {
                self.take(uid, h);
            }
        }
    }

    fn take(&mut self, uid: &str, h: u8) -> String {
        self.used[h as usize] = true;
        self.by_uid.insert(uid.to_string(), h);
        self.addr(h)
    }

    pub fn release(&mut self, uid: &str) {
        if let Some(h) = self.by_uid.remove(uid) {
            self.used[h as usize] = false;
        }
    }

    /// Releases the IPs of pods that `live` no longer knows.
    pub fn retain(&mut self, live: impl Fn(&str) -> bool) {
        let gone: Vec<String> = self.by_uid.keys().filter(|u| !live(u)).cloned().collect();
        for u in gone {
            self.release(&u);
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.by_uid.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_per_node() {
        let mut a = PodIps::for_node(0).expect("range");
        assert_eq!(a.ip_of("u1", None).expect("ip"), "10.244.0.1");
        assert_eq!(a.ip_of("u1", None).expect("ip"), "10.244.0.1", "stable per pod");
        assert_eq!(a.ip_of("u2", None).expect("ip"), "10.244.0.2");
        let mut b = PodIps::for_node(7).expect("range");
        assert_eq!(b.ip_of("u1", None).expect("ip"), "10.244.7.1");
        let mut c = PodIps::for_node(300).expect("range");
        assert_eq!(c.ip_of("u", None).expect("ip"), "10.245.44.1");
        assert!(PodIps::for_node(usize::MAX).is_err());
    }

    #[test]
    fn pod_cidr_from_node_ipam() {
        let mut a = PodIps::for_node(0).expect("range");
        assert!(a.adopt_cidr("10.244.9.0/24"));
        assert_eq!(a.ip_of("u", None).expect("ip"), "10.244.9.1");
        assert!(!a.adopt_cidr("10.244.10.0/24"), "IPs handed out: the range stays");
        assert!(a.adopt_cidr("10.244.9.0/24"));
        for bad in ["10.244.9.0/23", "10.244.9.5/24", "fd00::/64", "x"] {
            assert!(PodIps::for_cidr(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn unique_until_exhausted_and_not_reused_at_once() {
        let mut a = PodIps::for_node(1).expect("range");
        let mut seen = std::collections::HashSet::new();
        for i in 0..254 {
            assert!(seen.insert(a.ip_of(&format!("u{i}"), None).expect("ip")));
        }
        assert!(a.ip_of("one-too-many", None).is_err());
        a.release("u3");
        assert_eq!(a.ip_of("new", None).expect("ip"), "10.244.1.4");
        a.retain(|u| u == "new");
        assert_eq!(a.len(), 1);
        // Round robin: allocation continues after the last IP handed out, not from .1.
        assert_eq!(a.ip_of("n2", None).expect("ip"), "10.244.1.5");
    }

    #[test]
    fn existing_ips_are_kept_when_ours_and_free() {
        let mut a = PodIps::for_node(2).expect("range");
        a.claim("old", "10.244.2.9");
        assert_eq!(a.ip_of("old", None).expect("ip"), "10.244.2.9");
        assert_eq!(a.ip_of("p", Some("10.244.2.20")).expect("ip"), "10.244.2.20");
        // Taken, foreign or garbage: a fresh one.
        assert_eq!(a.ip_of("q", Some("10.244.2.9")).expect("ip"), "10.244.2.1");
        assert_eq!(a.ip_of("r", Some("10.244.3.5")).expect("ip"), "10.244.2.2");
        assert_eq!(a.ip_of("s", Some("not an ip")).expect("ip"), "10.244.2.3");
        assert_eq!(a.ip_of("t", Some("10.244.2.255")).expect("ip"), "10.244.2.4");
        a.claim("dup", "10.244.2.20");
        assert_eq!(a.len(), 6);
    }
}
