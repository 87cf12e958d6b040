//! The gate in front of the SSH handshake: temporary bans for sources that keep failing
//! to log in, limits on connections per source and in total, and a MaxStartups-style cap
//! on connections that have not logged in yet (in total and per source). Every refusal is
//! logged with the address and the reason. A source is an IPv4 address or an IPv6 /64
//! ([`source_of`]).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ipnet::IpNet;

use super::source::source_of;

/// Ban and connection-limit settings.
#[derive(Debug, Clone)]
pub struct GuardSettings {
    /// Failed logins from one address within `window` that trigger a ban; 0 disables bans.
    pub ban_threshold: u32,
    /// Failures older than this are forgotten.
    pub window: Duration,
    /// Length of the first ban.
    pub ban_time: Duration,
    /// Each further ban of the same address lasts this many times longer...
    pub ban_growth: u32,
    /// ...up to this.
    pub max_ban_time: Duration,
    /// Open connections allowed from one address; 0 means no limit.
    pub max_per_ip: usize,
    /// Open connections allowed in total; 0 means no limit.
    pub max_total: usize,
    /// Connections not logged in yet, in total (sshd's MaxStartups); 0 means no limit.
    /// Without it, sockets that never finish the handshake fill `max_total` and lock
    /// every real user out.
    pub max_unauthenticated: usize,
    /// Connections not logged in yet from one source; 0 means no limit.
    pub max_unauthenticated_per_source: usize,
    /// Networks never penalised for connecting without logging in or for hitting a
    /// limit, and not held to `max_unauthenticated_per_source` (a load balancer's
    /// health checks, a trusted network). Wrong passwords still count.
    pub exempt: Vec<IpNet>,
}

impl Default for GuardSettings {
    fn default() -> Self {
        GuardSettings {
            ban_threshold: 10,
            window: Duration::from_secs(600),
            ban_time: Duration::from_secs(300),
            ban_growth: 2,
            max_ban_time: Duration::from_secs(24 * 3600),
            max_per_ip: 50,
            max_total: 2000,
            max_unauthenticated: 256,
            max_unauthenticated_per_source: 32,
            exempt: Vec::new(),
        }
    }
}

#[derive(Debug, Default)]
struct Record {
    failures: u32,
    first_failure: Option<Instant>,
    banned_until: Option<Instant>,
    bans: u32,
    connections: usize,
    /// Of `connections`, those not logged in yet.
    unauthenticated: usize,
}

impl Record {
    fn is_idle(&self, now: Instant, window: Duration) -> bool {
        self.connections == 0
            && self.banned_until.is_none_or(|t| t <= now)
            && self
                .first_failure
                .is_none_or(|t| now.duration_since(t) > window)
            && self.bans == 0
    }
}

#[derive(Debug, Default)]
struct State {
    /// Keyed by source ([`source_of`]), not by address.
    by_ip: HashMap<IpAddr, Record>,
    total: usize,
    /// Of `total`, the connections not logged in yet (every slot starts so).
    unauthenticated: usize,
}

/// Shared by the accept loop and every connection.
#[derive(Debug)]
pub struct Guard {
    settings: GuardSettings,
    state: Mutex<State>,
}

/// A source banned now, as `s3sftp bans` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ban {
    /// An IPv4 address, or the first address of an IPv6 /64.
    pub source: IpAddr,
    /// When the ban ends.
    pub until: chrono::DateTime<chrono::Utc>,
    pub seconds_left: u64,
    /// Failed logins counted since the ban began (they start the next, longer one).
    pub failures: u32,
    /// How many times the source has been banned (each ban is longer).
    pub bans: u32,
}

/// Why a connection was turned away before the handshake.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("address banned for another {0} s after repeated failed logins")]
    Banned(u64),
    #[error("too many connections from this address (limit {0})")]
    PerIpLimit(usize),
    #[error("too many connections (limit {0})")]
    TotalLimit(usize),
    #[error("too many connections not logged in yet (limit {0})")]
    UnauthenticatedLimit(usize),
    #[error("too many connections not logged in yet from this address (limit {0})")]
    UnauthenticatedPerSourceLimit(usize),
}

impl Refusal {
    /// The `reason` label of the refused-connections metric.
    pub fn label(&self) -> &'static str {
        match self {
            Refusal::Banned(_) => "banned",
            Refusal::PerIpLimit(_) => "per_ip_limit",
            Refusal::TotalLimit(_) => "total_limit",
            Refusal::UnauthenticatedLimit(_) => "unauthenticated_limit",
            Refusal::UnauthenticatedPerSourceLimit(_) => "unauthenticated_per_source_limit",
        }
    }

    /// Whether the refusal counts against the source like a failed login: a source that
    /// keeps hitting its own limits is banned. Total limits are not the source's doing.
    fn is_penalised(&self) -> bool {
        matches!(
            self,
            Refusal::PerIpLimit(_) | Refusal::UnauthenticatedPerSourceLimit(_)
        )
    }
}

/// A connection's place in the total count, taken when it is accepted (before its client
/// address is known, which behind a load balancer takes a PROXY header); released on drop.
/// It also counts as not logged in until [`Admission::logged_in`].
#[derive(Debug)]
pub struct Slot {
    guard: Arc<Guard>,
    /// Still counted in `State::unauthenticated`.
    unauthenticated: bool,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut state = self.guard.lock();
        state.total = state.total.saturating_sub(1);
        if self.unauthenticated {
            state.unauthenticated = state.unauthenticated.saturating_sub(1);
        }
    }
}

/// A connection admitted for its client address: its slot plus its place in that source's
/// counts; released on drop.
#[derive(Debug)]
pub struct Admission {
    slot: Slot,
    /// The source the connection is counted under.
    source: IpAddr,
}

impl Drop for Admission {
    fn drop(&mut self) {
        // The slot (total counts) is released right after, when the field drops.
        let mut state = self.slot.guard.lock();
        if let Some(r) = state.by_ip.get_mut(&self.source) {
            r.connections = r.connections.saturating_sub(1);
            if self.slot.unauthenticated {
                r.unauthenticated = r.unauthenticated.saturating_sub(1);
            }
        }
    }
}

impl Admission {
    /// The connection logged in: it no longer counts against the caps on connections not
    /// logged in yet. Calling it again does nothing.
    pub fn logged_in(&mut self) {
        if !self.slot.unauthenticated {
            return;
        }
        self.slot.unauthenticated = false;
        let mut state = self.slot.guard.lock();
        state.unauthenticated = state.unauthenticated.saturating_sub(1);
        if let Some(r) = state.by_ip.get_mut(&self.source) {
            r.unauthenticated = r.unauthenticated.saturating_sub(1);
        }
    }
}

impl Slot {
    /// Admits the connection for its client address `ip`: refused if `ip`'s source is
    /// banned or has too many connections (the slot is then released). A refusal for the
    /// source's own limits counts against it like a failed login (see [`Guard::penalise`]).
    pub fn admit(self, ip: IpAddr) -> Result<Admission, Refusal> {
        let guard = self.guard.clone();
        let refusal = match self.try_admit(ip) {
            Ok(admission) => return Ok(admission),
            Err(refusal) => refusal,
        };
        if refusal.is_penalised() {
            if let Some(length) = guard.penalise(ip) {
                super::log_ban(ip, length);
            }
        }
        Err(refusal)
    }

    fn try_admit(self, ip: IpAddr) -> Result<Admission, Refusal> {
        let now = Instant::now();
        let source = source_of(ip);
        let exempt = self.guard.is_exempt(ip);
        let s = &self.guard.settings;
        let mut state = self.guard.lock();
        if state.by_ip.len() > 10_000 {
            // Forget sources with nothing to remember, so the map stays bounded.
            state.by_ip.retain(|_, r| !r.is_idle(now, s.window));
        }
        let record = state.by_ip.entry(source).or_default();
        if let Some(until) = record.banned_until {
            if until > now {
                return Err(Refusal::Banned(until.duration_since(now).as_secs() + 1));
            }
            record.banned_until = None;
        }
        if s.max_per_ip > 0 && record.connections >= s.max_per_ip {
            return Err(Refusal::PerIpLimit(s.max_per_ip));
        }
        let per_source = s.max_unauthenticated_per_source;
        if !exempt && per_source > 0 && record.unauthenticated >= per_source {
            return Err(Refusal::UnauthenticatedPerSourceLimit(per_source));
        }
        record.connections += 1;
        record.unauthenticated += 1;
        drop(state);
        Ok(Admission { slot: self, source })
    }
}

impl Guard {
    pub fn new(settings: GuardSettings) -> Arc<Self> {
        Arc::new(Guard {
            settings,
            state: Mutex::new(State::default()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        match self.state.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Takes a place in the total counts for a new connection, or says why not.
    pub fn reserve(self: &Arc<Self>) -> Result<Slot, Refusal> {
        let max_total = self.settings.max_total;
        let max_unauthenticated = self.settings.max_unauthenticated;
        let mut state = self.lock();
        if max_total > 0 && state.total >= max_total {
            return Err(Refusal::TotalLimit(max_total));
        }
        if max_unauthenticated > 0 && state.unauthenticated >= max_unauthenticated {
            return Err(Refusal::UnauthenticatedLimit(max_unauthenticated));
        }
        state.total += 1;
        state.unauthenticated += 1;
        Ok(Slot {
            guard: self.clone(),
            unauthenticated: true,
        })
    }

    /// Whether `ip` is in one of the exempt networks.
    pub fn is_exempt(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.settings.exempt.iter().any(|net| net.contains(&ip))
    }

    /// Counts a connection that never logged in, or hit its source's limit, against its
    /// source like a failed login (sshd's PerSourcePenalties), unless `ip` is exempt.
    /// Returns the ban length if this started a ban.
    pub fn penalise(&self, ip: IpAddr) -> Option<Duration> {
        if self.is_exempt(ip) {
            return None;
        }
        self.failed_login(ip)
    }

    /// Lets a new connection from `ip` in, or says why not: [`Guard::reserve`], then
    /// [`Slot::admit`].
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Admission, Refusal> {
        self.reserve()?.admit(ip)
    }

    /// Counts a failed login; returns the ban length if this failure started a ban.
    pub fn failed_login(&self, ip: IpAddr) -> Option<Duration> {
        let s = &self.settings;
        if s.ban_threshold == 0 {
            return None;
        }
        let now = Instant::now();
        let mut state = self.lock();
        let record = state.by_ip.entry(source_of(ip)).or_default();
        if record
            .first_failure
            .is_none_or(|t| now.duration_since(t) > s.window)
        {
            record.first_failure = Some(now);
            record.failures = 0;
        }
        record.failures += 1;
        if record.failures < s.ban_threshold {
            return None;
        }
        let factor = s.ban_growth.max(1).saturating_pow(record.bans.min(30));
        let length = s.ban_time.saturating_mul(factor).min(s.max_ban_time);
        record.banned_until = Some(now + length);
        record.bans += 1;
        record.failures = 0;
        record.first_failure = None;
        Some(length)
    }

    /// True if `ip` is banned now (a connection already open is cut at its next failure).
    pub fn is_banned(&self, ip: IpAddr) -> bool {
        let now = Instant::now();
        self.lock()
            .by_ip
            .get(&source_of(ip))
            .and_then(|r| r.banned_until)
            .is_some_and(|t| t > now)
    }

    /// The sources banned now, with when each ban ends, soonest first.
    pub fn bans(&self) -> Vec<Ban> {
        let now = Instant::now();
        let wall = chrono::Utc::now();
        let mut bans: Vec<Ban> = self
            .lock()
            .by_ip
            .iter()
            .filter_map(|(source, r)| {
                let until = r.banned_until.filter(|t| *t > now)?;
                let left = until.duration_since(now);
                Some(Ban {
                    source: *source,
                    until: wall + chrono::Duration::from_std(left).unwrap_or_default(),
                    seconds_left: left.as_secs() + 1,
                    failures: r.failures,
                    bans: r.bans,
                })
            })
            .collect();
        bans.sort_by(|a, b| a.until.cmp(&b.until).then(a.source.cmp(&b.source)));
        bans
    }

    /// Lifts the ban on `ip`'s source and forgets its failures and past bans; returns the
    /// source, and whether it was banned.
    pub fn unban(&self, ip: IpAddr) -> (IpAddr, bool) {
        let now = Instant::now();
        let source = source_of(ip);
        let mut state = self.lock();
        let Some(r) = state.by_ip.get_mut(&source) else {
            return (source, false);
        };
        let was_banned = r.banned_until.is_some_and(|t| t > now);
        r.banned_until = None;
        r.failures = 0;
        r.first_failure = None;
        r.bans = 0;
        (source, was_banned)
    }

    /// Sources banned now.
    pub fn banned_count(&self) -> usize {
        let now = Instant::now();
        self.lock()
            .by_ip
            .values()
            .filter(|r| r.banned_until.is_some_and(|t| t > now))
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, n])
    }

    #[test]
    fn bans_after_threshold_and_grow() {
        let g = Guard::new(GuardSettings {
            ban_threshold: 3,
            ban_time: Duration::from_secs(10),
            ..Default::default()
        });
        assert_eq!(g.failed_login(ip(1)), None);
        assert_eq!(g.failed_login(ip(1)), None);
        assert_eq!(g.failed_login(ip(1)), Some(Duration::from_secs(10)));
        assert!(g.is_banned(ip(1)));
        assert!(matches!(g.admit(ip(1)), Err(Refusal::Banned(_))));
        assert!(g.admit(ip(2)).is_ok(), "others are not affected");
        // The next ban of the same address is longer.
        for _ in 0..2 {
            g.failed_login(ip(1));
        }
        assert_eq!(g.failed_login(ip(1)), Some(Duration::from_secs(20)));
    }

    #[test]
    fn lists_and_lifts_bans() {
        let g = Guard::new(GuardSettings {
            ban_threshold: 1,
            ..Default::default()
        });
        assert!(g.bans().is_empty());
        g.failed_login(ip(1));
        let v6: IpAddr = "2001:db8:1:2::7".parse().unwrap();
        g.failed_login(v6);
        let bans = g.bans();
        assert_eq!(bans.len(), 2);
        assert!(bans.iter().any(|b| b.source == ip(1) && b.bans == 1));
        // An IPv6 address maps to its /64.
        let other: IpAddr = "2001:db8:1:2::9".parse().unwrap();
        assert_eq!(g.unban(other), ("2001:db8:1:2::".parse().unwrap(), true));
        assert_eq!(g.unban(ip(1)), (ip(1), true));
        assert_eq!(g.unban(ip(1)), (ip(1), false));
        assert!(g.bans().is_empty());
        assert!(g.admit(ip(1)).is_ok() && g.admit(v6).is_ok());
    }

    #[test]
    fn connection_limits_release_on_drop() {
        let g = Guard::new(GuardSettings {
            max_per_ip: 2,
            max_total: 3,
            ..Default::default()
        });
        let a = g.admit(ip(1)).unwrap();
        let _b = g.admit(ip(1)).unwrap();
        assert_eq!(g.admit(ip(1)).unwrap_err(), Refusal::PerIpLimit(2));
        let _c = g.admit(ip(2)).unwrap();
        assert_eq!(g.admit(ip(3)).unwrap_err(), Refusal::TotalLimit(3));
        drop(a);
        assert!(g.admit(ip(1)).is_ok());
    }

    #[test]
    fn a_slot_counts_in_the_total_before_its_address_is_known() {
        let g = Guard::new(GuardSettings {
            ban_threshold: 1,
            max_per_ip: 1,
            max_total: 2,
            ..Default::default()
        });
        let waiting = g.reserve().unwrap();
        let _other = g.admit(ip(2)).unwrap();
        assert_eq!(g.reserve().unwrap_err(), Refusal::TotalLimit(2));
        // A refusal for the address gives the slot back.
        g.failed_login(ip(1));
        assert!(matches!(waiting.admit(ip(1)), Err(Refusal::Banned(_))));
        let slot = g.reserve().expect("the refused slot was released");
        assert_eq!(
            slot.admit(ip(2)).unwrap_err(),
            Refusal::PerIpLimit(1),
            "the per-address limit applies to the address given to the slot"
        );
        let admitted = g.reserve().unwrap().admit(ip(3)).unwrap();
        assert_eq!(g.reserve().unwrap_err(), Refusal::TotalLimit(2));
        drop(admitted);
        assert!(
            g.admit(ip(3)).is_ok(),
            "dropping an admission frees both counts"
        );
    }

    #[test]
    fn disabled_bans() {
        let g = Guard::new(GuardSettings {
            ban_threshold: 0,
            ..Default::default()
        });
        for _ in 0..100 {
            assert_eq!(g.failed_login(ip(1)), None);
        }
        assert!(g.admit(ip(1)).is_ok());
    }

    #[test]
    fn unauthenticated_connections_are_capped_in_total_and_per_source() {
        let g = Guard::new(GuardSettings {
            ban_threshold: 0,
            max_unauthenticated: 3,
            max_unauthenticated_per_source: 2,
            ..Default::default()
        });
        let mut a = g.admit(ip(1)).unwrap();
        let _b = g.admit(ip(1)).unwrap();
        assert_eq!(
            g.admit(ip(1)).unwrap_err(),
            Refusal::UnauthenticatedPerSourceLimit(2)
        );
        let _c = g.admit(ip(2)).unwrap();
        assert_eq!(g.reserve().unwrap_err(), Refusal::UnauthenticatedLimit(3));
        // A login frees both unauthenticated counts but keeps the connection counted.
        a.logged_in();
        a.logged_in();
        let _d = g
            .admit(ip(1))
            .expect("room again for the source and in total");
        assert_eq!(g.lock().total, 4);
        assert_eq!(g.lock().unauthenticated, 3);
        drop(a);
        assert_eq!(g.lock().total, 3);
        assert_eq!(
            g.lock().unauthenticated,
            3,
            "a logged-in connection is not counted twice"
        );
    }

    #[test]
    fn an_ipv6_64_is_one_source() {
        let g = Guard::new(GuardSettings {
            ban_threshold: 2,
            max_unauthenticated_per_source: 2,
            ..Default::default()
        });
        let v6 = |s: &str| -> IpAddr { s.parse().unwrap() };
        let _a = g.admit(v6("2001:db8:0:1::1")).unwrap();
        let _b = g.admit(v6("2001:db8:0:1::2")).unwrap();
        assert_eq!(
            g.admit(v6("2001:db8:0:1:ffff::3")).unwrap_err(),
            Refusal::UnauthenticatedPerSourceLimit(2)
        );
        assert!(g.admit(v6("2001:db8:0:2::1")).is_ok(), "another /64");
        // Failures of any address in the /64 ban the whole /64.
        g.failed_login(v6("2001:db8:0:1::9"));
        assert!(g.is_banned(v6("2001:db8:0:1::1")));
        assert!(!g.is_banned(v6("2001:db8:0:2::1")));
    }

    #[test]
    fn hitting_a_source_limit_is_penalised_unless_exempt() {
        let g = Guard::new(GuardSettings {
            ban_threshold: 2,
            max_unauthenticated_per_source: 1,
            exempt: vec!["10.0.0.0/24".parse().unwrap()],
            ..Default::default()
        });
        let outsider = IpAddr::from([192, 0, 2, 1]);
        let _a = g.admit(outsider).unwrap();
        assert!(g.admit(outsider).is_err());
        assert!(!g.is_banned(outsider), "one penalty so far");
        assert!(g.admit(outsider).is_err());
        assert!(g.is_banned(outsider), "two penalties ban");
        // An exempt address is neither capped per source nor penalised.
        let _x = g.admit(ip(1)).unwrap();
        let _y = g.admit(ip(1)).expect("exempt from the per-source cap");
        for _ in 0..5 {
            assert_eq!(g.penalise(ip(1)), None);
        }
        assert!(!g.is_banned(ip(1)));
        // Wrong passwords still count for exempt addresses.
        g.failed_login(ip(1));
        g.failed_login(ip(1));
        assert!(g.is_banned(ip(1)));
    }
}
