//! The limits a server puts on its clients: timeouts, a connection cap and a per-client rate
//! limit, with their defaults and the `[limits]` section of a server's configuration file.

use serde::Deserialize;
use std::time::Duration;

/// What a server tolerates from its clients. [`Limits::default`] gives the defaults stated in
/// the README's security section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// A request's header must arrive whole within this time after the server starts waiting
    /// for it (on a new connection, and on a kept-alive one between requests); otherwise the
    /// connection is closed. Default 10 s.
    pub header_read_timeout: Duration,
    /// A request's body must arrive whole within this time after its header; otherwise the
    /// request fails and the connection is closed. Default 30 s.
    pub body_read_timeout: Duration,
    /// A connection on which no byte moves either way (a client that neither sends nor reads
    /// the answer) for this time is closed. Default 60 s.
    pub idle_timeout: Duration,
    /// At most this many connections are served at once. Default 512.
    pub max_connections: usize,
    /// Past `max_connections`, this many more connections may still ask for `/v1/health`
    /// (every other path answers `503`), so monitoring sees a full server; past both, new
    /// connections are closed at once. Default 16.
    pub health_reserve: usize,
    /// Per client address, the rate-limited endpoints (logins, access codes) accept this many
    /// requests a second on average... 0 turns the rate limit off. Default 5.
    pub rate_per_second: u32,
    /// ... and this many in a burst. Default 20.
    pub rate_burst: u32,
    /// Per client address, the endpoints of signed requests between services (a TSM's
    /// `/v1/control`, the issuer's `/v1/issuer`, the broker's `/v1/service/redeem` and
    /// `/v1/admin`) accept this many requests a second on average: far above what one
    /// partner sends (an SP-TSM's few hundred a second), far below what a flood of forged
    /// signatures, each checked, would cost. 0 turns it off. Default 2000.
    pub peer_rate_per_second: u32,
    /// ... and this many in a burst. Default 4000.
    pub peer_rate_burst: u32,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            max_connections: 512,
            health_reserve: 16,
            rate_per_second: 5,
            rate_burst: 20,
            peer_rate_per_second: 2000,
            peer_rate_burst: 4000,
        }
    }
}

/// Descriptors kept free for everything but client connections (the database and its
/// journal, TLS and key files, logs, the listener, the runtime's own).
pub const DESCRIPTOR_MARGIN: u64 = 32;

impl Limits {
    /// These limits with the connection cap (and its reserve) lowered so that, at
    /// `open_files` descriptors for the process (the soft `RLIMIT_NOFILE`), every connection
    /// served plus [`DESCRIPTOR_MARGIN`] fits: past the cap a connection is closed at once
    /// instead of the listener failing with `Too many open files`. The reserve keeps at most a
    /// quarter of what is left. Unchanged when everything fits; `None` then.
    pub fn fitted_to_descriptors(&self, open_files: u64) -> Option<Limits> {
        let budget = usize::try_from(open_files.saturating_sub(DESCRIPTOR_MARGIN))
            .unwrap_or(usize::MAX)
            .max(2);
        if self.max_connections.saturating_add(self.health_reserve) <= budget {
            return None;
        }
        let reserve = self.health_reserve.min(budget / 4);
        Some(Limits {
            max_connections: self.max_connections.min(budget - reserve).max(1),
            health_reserve: reserve,
            ..self.clone()
        })
    }
}

/// The `[limits]` section of a server's configuration file (every field optional; seconds for
/// the timeouts).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LimitsFile {
    /// [`Limits::header_read_timeout`], seconds.
    pub header_timeout_secs: Option<f64>,
    /// [`Limits::body_read_timeout`], seconds.
    pub body_timeout_secs: Option<f64>,
    /// [`Limits::idle_timeout`], seconds.
    pub idle_timeout_secs: Option<f64>,
    /// [`Limits::max_connections`].
    pub max_connections: Option<usize>,
    /// [`Limits::health_reserve`].
    pub health_reserve: Option<usize>,
    /// [`Limits::rate_per_second`].
    pub rate_per_second: Option<u32>,
    /// [`Limits::rate_burst`].
    pub rate_burst: Option<u32>,
    /// [`Limits::peer_rate_per_second`].
    pub peer_rate_per_second: Option<u32>,
    /// [`Limits::peer_rate_burst`].
    pub peer_rate_burst: Option<u32>,
}

/// A limit that makes no sense (a zero or negative timeout, no connection at all).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("limits: {0}")]
pub struct LimitsError(pub String);

fn secs(name: &str, v: Option<f64>, into: &mut Duration) -> Result<(), LimitsError> {
    if let Some(s) = v {
        if !(s.is_finite() && s > 0.0 && s <= 86_400.0) {
            return Err(LimitsError(format!(
                "{name} must be a number of seconds between 0 (excluded) and 86400, not {s}"
            )));
        }
        *into = Duration::from_secs_f64(s);
    }
    Ok(())
}

/// A rate and its burst, each `(key, value, field)`: the rate may be 0 (off), the burst not.
fn rate(
    per_second: (&str, Option<u32>, &mut u32),
    burst: (&str, Option<u32>, &mut u32),
) -> Result<(), LimitsError> {
    if let Some(n) = per_second.1 {
        *per_second.2 = n;
    }
    if let Some(n) = burst.1 {
        if n == 0 {
            return Err(LimitsError(format!(
                "{} must be at least 1 (turn the rate limit off with {} = 0)",
                burst.0, per_second.0
            )));
        }
        *burst.2 = n;
    }
    Ok(())
}

impl LimitsFile {
    /// Overrides the fields of `limits` this section sets (later sections, such as command-line
    /// flags, override earlier ones).
    pub fn apply(&self, limits: &mut Limits) -> Result<(), LimitsError> {
        secs(
            "header_timeout_secs",
            self.header_timeout_secs,
            &mut limits.header_read_timeout,
        )?;
        secs(
            "body_timeout_secs",
            self.body_timeout_secs,
            &mut limits.body_read_timeout,
        )?;
        secs(
            "idle_timeout_secs",
            self.idle_timeout_secs,
            &mut limits.idle_timeout,
        )?;
        if let Some(n) = self.max_connections {
            if n == 0 {
                return Err(LimitsError(
                    "max_connections must be at least 1".to_string(),
                ));
            }
            limits.max_connections = n;
        }
        if let Some(n) = self.health_reserve {
            limits.health_reserve = n;
        }
        rate(
            (
                "rate_per_second",
                self.rate_per_second,
                &mut limits.rate_per_second,
            ),
            ("rate_burst", self.rate_burst, &mut limits.rate_burst),
        )?;
        rate(
            (
                "peer_rate_per_second",
                self.peer_rate_per_second,
                &mut limits.peer_rate_per_second,
            ),
            (
                "peer_rate_burst",
                self.peer_rate_burst,
                &mut limits.peer_rate_burst,
            ),
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_fits_the_descriptor_limit() {
        let l = Limits::default();
        // 512 + 16 connections fit in 1024 descriptors less the margin of 32.
        assert_eq!(l.fitted_to_descriptors(1024), None);
        assert_eq!(l.fitted_to_descriptors(560), None);
        // At 128: 96 for connections, 16 of them the reserve.
        let f = l.fitted_to_descriptors(128).unwrap();
        assert_eq!((f.max_connections, f.health_reserve), (80, 16));
        assert_eq!(f.header_read_timeout, l.header_read_timeout);
        // At 64: 32 left, a quarter (8) the reserve.
        let f = l.fitted_to_descriptors(64).unwrap();
        assert_eq!((f.max_connections, f.health_reserve), (24, 8));
        // Absurdly low: still one connection.
        let f = l.fitted_to_descriptors(3).unwrap();
        assert_eq!((f.max_connections, f.health_reserve), (2, 0));
    }

    #[test]
    fn file_overrides_and_refuses_nonsense() {
        let mut l = Limits::default();
        let f = LimitsFile {
            header_timeout_secs: Some(0.5),
            max_connections: Some(3),
            rate_per_second: Some(0),
            peer_rate_per_second: Some(50),
            ..LimitsFile::default()
        };
        f.apply(&mut l).unwrap();
        assert_eq!((l.peer_rate_per_second, l.peer_rate_burst), (50, 4000));
        assert_eq!(l.header_read_timeout, Duration::from_millis(500));
        assert_eq!(l.max_connections, 3);
        assert_eq!(l.rate_per_second, 0);
        assert_eq!(l.body_read_timeout, Duration::from_secs(30));
        for bad in [
            LimitsFile {
                idle_timeout_secs: Some(0.0),
                ..LimitsFile::default()
            },
            LimitsFile {
                body_timeout_secs: Some(f64::NAN),
                ..LimitsFile::default()
            },
            LimitsFile {
                max_connections: Some(0),
                ..LimitsFile::default()
            },
            LimitsFile {
                rate_burst: Some(0),
                ..LimitsFile::default()
            },
            LimitsFile {
                peer_rate_burst: Some(0),
                ..LimitsFile::default()
            },
        ] {
            assert!(bad.apply(&mut Limits::default()).is_err(), "{bad:?}");
        }
    }
}
