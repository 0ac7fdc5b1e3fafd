//! Retention: which snapshots a `forget` policy keeps, with restic's
//! semantics, so that a policy written for restic means the same here.
//!
//! Snapshots are first split into groups (by host and paths unless told
//! otherwise) and the policy is applied to each group on its own. Within a
//! group, snapshots are walked newest first:
//!
//! - `last N` keeps the N newest;
//! - `hourly/daily/weekly/monthly/yearly N` keep the newest snapshot of each
//!   of the N most recent periods that have a snapshot. Periods are calendar
//!   periods in the local time the snapshot was recorded with (ISO weeks,
//!   Monday to Sunday). While such a rule still has periods left when the
//!   oldest snapshot is reached, the oldest is kept too ("oldest daily
//!   snapshot"), so that a young repository keeps its full history;
//! - `within D` keeps every snapshot taken after the newest snapshot's time
//!   minus D (calendar arithmetic, as Go's `AddDate`); snapshots dated in the
//!   future do not count as the newest;
//! - `within-hourly/daily/weekly/monthly/yearly D` keep the newest snapshot
//!   of every such period among the snapshots `within D` would keep (and,
//!   as above, the oldest of those);
//! - `tag T` keeps every snapshot with all tags of one of the tag lists.
//!
//! A snapshot is kept if any rule keeps it, and every rule that does is
//! reported.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use jiff::civil::{Date, DateTime};
use jiff::tz::Offset;

use crate::error::{Error, Result};
use crate::snapshot::Snapshot;

/// A `--keep-*` count; [`UNLIMITED`] keeps every period.
pub type Count = u32;
pub const UNLIMITED: Count = Count::MAX;

/// Parses a `--keep-*` count: a number, or `unlimited`.
pub fn parse_count(s: &str) -> Result<Count> {
    if s == "unlimited" {
        return Ok(UNLIMITED);
    }
    s.parse::<u32>()
        .map_err(|_| Error::InvalidInput(format!("{s:?} is not a count: give a number of snapshots or `unlimited`")))
}

/// A calendar duration as restic writes it: `1y2m3d4h` (any subset, in any
/// order; a unit given twice takes the last value).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Duration {
    pub years: u32,
    pub months: u32,
    pub days: u32,
    pub hours: u32,
}

impl FromStr for Duration {
    type Err = Error;

    fn from_str(s: &str) -> Result<Duration> {
        let bad = |why: &str| Error::InvalidInput(format!("bad duration {s:?}: {why} (expected e.g. 1y2m3d4h)"));
        let mut d = Duration::default();
        let mut rest = s.trim();
        if rest.is_empty() {
            return Err(bad("it is empty"));
        }
        while !rest.is_empty() {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 {
                return Err(bad("expected a number"));
            }
            let n: u32 = rest[..digits].parse().map_err(|_| bad("number too large"))?;
            let unit = rest[digits..].chars().next().ok_or_else(|| bad("no unit after the last number"))?;
            match unit {
                'y' => d.years = n,
                'm' => d.months = n,
                'd' => d.days = n,
                'h' => d.hours = n,
                other => return Err(bad(&format!("unknown unit {other:?}; units are y, m, d and h"))),
            }
            rest = &rest[digits + unit.len_utf8()..];
        }
        Ok(d)
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut any = false;
        for (n, unit) in [(self.years, 'y'), (self.months, 'm'), (self.days, 'd'), (self.hours, 'h')] {
            if n != 0 {
                write!(f, "{n}{unit}")?;
                any = true;
            }
        }
        if !any {
            f.write_str("0h")?;
        }
        Ok(())
    }
}

impl Duration {
    pub fn is_zero(&self) -> bool {
        *self == Duration::default()
    }

    /// `t` minus this duration, computed as Go's `t.AddDate(-y, -m, -d)`
    /// followed by `Add(-h hours)` (restic's definition): months that
    /// overflow a shorter month roll into the next, so 31 March minus a
    /// month is 3 March (or 2 March in a leap year), not 28 February.
    fn before(&self, t: jiff::Timestamp, offset: Offset) -> Option<jiff::Timestamp> {
        let local = offset.to_datetime(t);
        let months = i64::from(local.year()) * 12 + i64::from(local.month())
            - 1
            - i64::from(self.years) * 12
            - i64::from(self.months);
        let year = i16::try_from(months.div_euclid(12)).ok()?;
        let month = i8::try_from(months.rem_euclid(12) + 1).ok()?;
        let first = Date::new(year, month, 1).ok()?;
        let day = first.checked_add(jiff::Span::new().days(i64::from(local.day()) - 1 - i64::from(self.days))).ok()?;
        let shifted = offset.to_timestamp(DateTime::from_parts(day, local.time())).ok()?;
        shifted.checked_sub(jiff::SignedDuration::from_hours(i64::from(self.hours))).ok()
    }
}

/// What to keep.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    pub last: Count,
    pub hourly: Count,
    pub daily: Count,
    pub weekly: Count,
    pub monthly: Count,
    pub yearly: Count,
    pub within: Option<Duration>,
    /// `within-hourly`, `-daily`, `-weekly`, `-monthly`, `-yearly`, in that order.
    pub within_periods: [Option<Duration>; 5],
    /// Keep snapshots that have all tags of any one of these lists. A list
    /// holding only the empty tag matches untagged snapshots.
    pub tags: Vec<Vec<String>>,
}

impl Policy {
    /// True when the policy names nothing to keep; `forget` refuses it, as
    /// restic does, instead of removing every snapshot.
    pub fn is_empty(&self) -> bool {
        self.tags.is_empty()
            && self.within.is_none_or(|d| d.is_zero())
            && self.within_periods.iter().all(|w| w.is_none_or(|d| d.is_zero()))
            && [self.last, self.hourly, self.daily, self.weekly, self.monthly, self.yearly].iter().all(|&n| n == 0)
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        for (n, what) in [
            (self.last, "last"),
            (self.hourly, "hourly"),
            (self.daily, "daily"),
            (self.weekly, "weekly"),
            (self.monthly, "monthly"),
            (self.yearly, "yearly"),
        ] {
            match n {
                0 => {}
                UNLIMITED => parts.push(format!("all {what}")),
                n => parts.push(format!("{n} {what}")),
            }
        }
        for (w, (what, _)) in self.within_periods.iter().zip(PERIODS) {
            if let Some(d) = w.filter(|d| !d.is_zero()) {
                parts.push(format!("{what} within {d}"));
            }
        }
        if let Some(d) = self.within.filter(|d| !d.is_zero()) {
            parts.push(format!("all within {d} of the newest"));
        }
        for list in &self.tags {
            parts.push(format!("all tagged {}", tag_list(list)));
        }
        if parts.is_empty() { f.write_str("keep nothing") } else { write!(f, "keep {}", parts.join(", ")) }
    }
}

fn tag_list(list: &[String]) -> String {
    format!("[{}]", list.join(","))
}

/// A snapshot's time as the policy sees it.
#[derive(Clone, Copy, Debug)]
pub struct SnapshotTime {
    pub instant: jiff::Timestamp,
    /// The wall-clock time where and when the snapshot was made.
    pub local: DateTime,
    pub offset: Offset,
}

impl SnapshotTime {
    /// Reads the RFC 3339 time of a snapshot, keeping its recorded offset.
    pub fn parse(time: &str) -> Result<SnapshotTime> {
        let bad = |e: jiff::Error| Error::InvalidInput(format!("bad snapshot time {time:?}: {e}"));
        let instant: jiff::Timestamp = time.parse().map_err(bad)?;
        let offset = jiff::fmt::temporal::Pieces::parse(time).map_err(bad)?.to_numeric_offset().unwrap_or(Offset::UTC);
        Ok(SnapshotTime { instant, local: offset.to_datetime(instant), offset })
    }
}

/// Numbers a calendar period, so that two times share a period exactly when
/// they map to the same number.
type PeriodOf = fn(DateTime) -> i64;

/// Calendar periods of the bucketed rules, in the order their reasons are listed.
const PERIODS: [(&str, PeriodOf); 5] = [
    ("hourly", |t| {
        ((i64::from(t.year()) * 100 + i64::from(t.month())) * 100 + i64::from(t.day())) * 100 + i64::from(t.hour())
    }),
    ("daily", |t| (i64::from(t.year()) * 100 + i64::from(t.month())) * 100 + i64::from(t.day())),
    ("weekly", |t| {
        let w = t.date().iso_week_date();
        i64::from(w.year()) * 100 + i64::from(w.week())
    }),
    ("monthly", |t| i64::from(t.year()) * 100 + i64::from(t.month())),
    ("yearly", |t| i64::from(t.year())),
];

/// The policy's verdict on one snapshot of a group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// Index of the snapshot in the slice given to [`apply`].
    pub index: usize,
    /// Why it is kept; empty means it is removed.
    pub reasons: Vec<String>,
}

impl Verdict {
    pub fn keep(&self) -> bool {
        !self.reasons.is_empty()
    }
}

/// Applies a policy to one group of snapshots. Returns a verdict per
/// snapshot, newest first (ties in the order given). `now` bounds which
/// snapshot counts as the newest for `within`.
pub fn apply(policy: &Policy, group: &[(SnapshotTime, &[String])], now: jiff::Timestamp) -> Vec<Verdict> {
    let mut order: Vec<usize> = (0..group.len()).collect();
    order.sort_by(|&a, &b| group[b].0.instant.cmp(&group[a].0.instant));

    let newest = group.iter().map(|(t, _)| t).filter(|t| t.instant < now).max_by_key(|t| t.instant);
    // With no snapshot in the past, everything is within (as restic, whose
    // newest time is then the zero time).
    let cutoff = |d: Option<Duration>| {
        d.filter(|d| !d.is_zero())
            .map(|d| newest.and_then(|n| d.before(n.instant, n.offset)).unwrap_or(jiff::Timestamp::MIN))
    };
    let within_after = cutoff(policy.within);
    let within_periods_after = policy.within_periods.map(cutoff);
    let mut last_within_period: [Option<i64>; 5] = [None; 5];

    let counts = [policy.hourly, policy.daily, policy.weekly, policy.monthly, policy.yearly];
    let mut left_last = policy.last;
    let mut left = counts;
    let mut last_period: [Option<i64>; 5] = [None; 5];

    let mut out = Vec::with_capacity(group.len());
    for (pos, &index) in order.iter().enumerate() {
        let (time, tags) = &group[index];
        let oldest = pos + 1 == order.len();
        let mut reasons = Vec::new();
        for list in &policy.tags {
            if has_tags(tags, list) {
                reasons.push(format!("tagged {}", tag_list(list)));
            }
        }
        if let Some(after) = within_after
            && time.instant > after
        {
            reasons.push(format!("within {}", policy.within.unwrap_or_default()));
        }
        if left_last > 0 {
            reasons.push("last snapshot".to_string());
            if left_last != UNLIMITED {
                left_last -= 1;
            }
        }
        for (i, (name, period_of)) in PERIODS.iter().enumerate() {
            if left[i] == 0 {
                continue;
            }
            let period = period_of(time.local);
            let new_period = last_period[i] != Some(period);
            if new_period || oldest {
                reasons.push(if new_period { format!("{name} snapshot") } else { format!("oldest {name} snapshot") });
                last_period[i] = Some(period);
                if left[i] != UNLIMITED {
                    left[i] -= 1;
                }
            }
        }
        for (i, (name, period_of)) in PERIODS.iter().enumerate() {
            let Some(after) = within_periods_after[i] else { continue };
            if time.instant <= after {
                continue;
            }
            let period = period_of(time.local);
            let new_period = last_within_period[i] != Some(period);
            if new_period || oldest {
                let d = policy.within_periods[i].unwrap_or_default();
                reasons.push(if new_period {
                    format!("{name} within {d}")
                } else {
                    format!("oldest {name} within {d}")
                });
                last_within_period[i] = Some(period);
            }
        }
        out.push(Verdict { index, reasons });
    }
    out
}

/// restic's tag test: the snapshot has every tag of the list; the empty tag
/// matches a snapshot without tags.
pub fn has_tags(tags: &[String], list: &[String]) -> bool {
    for want in list {
        if want.is_empty() && tags.is_empty() {
            return true;
        }
        if !tags.contains(want) {
            return false;
        }
    }
    true
}

/// Which snapshot fields split snapshots into groups (`--group-by`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GroupBy {
    pub host: bool,
    pub paths: bool,
    pub tags: bool,
}

impl Default for GroupBy {
    /// Host and paths, as restic.
    fn default() -> Self {
        GroupBy { host: true, paths: true, tags: false }
    }
}

impl FromStr for GroupBy {
    type Err = Error;

    /// `host,paths,tags` or a subset; the empty string puts every snapshot
    /// in one group.
    fn from_str(s: &str) -> Result<GroupBy> {
        let mut g = GroupBy { host: false, paths: false, tags: false };
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part {
                "host" => g.host = true,
                "paths" | "path" => g.paths = true,
                "tags" | "tag" => g.tags = true,
                other => {
                    return Err(Error::InvalidInput(format!(
                        "cannot group by {other:?}: use host, paths and/or tags, comma-separated, or '' for no grouping"
                    )));
                }
            }
        }
        Ok(g)
    }
}

/// What the snapshots of one group share.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct GroupKey {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paths: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tags: Option<Vec<String>>,
}

impl fmt::Display for GroupKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(h) = &self.host {
            parts.push(format!("host {h}"));
        }
        if let Some(p) = &self.paths {
            parts.push(format!("paths [{}]", p.join(", ")));
        }
        if let Some(t) = &self.tags {
            parts.push(format!("tags [{}]", t.join(", ")));
        }
        if parts.is_empty() { f.write_str("all snapshots") } else { f.write_str(&parts.join(", ")) }
    }
}

/// Splits snapshots into groups; each group lists indexes into `snapshots`,
/// in the order given. Paths and tags compare as sorted sets.
pub fn group<'a>(snapshots: impl IntoIterator<Item = &'a Snapshot>, by: GroupBy) -> BTreeMap<GroupKey, Vec<usize>> {
    let mut groups: BTreeMap<GroupKey, Vec<usize>> = BTreeMap::new();
    for (i, s) in snapshots.into_iter().enumerate() {
        let sorted = |v: &[String]| {
            let mut v = v.to_vec();
            v.sort();
            v
        };
        let key = GroupKey {
            host: by.host.then(|| s.host.clone()),
            paths: by.paths.then(|| sorted(&s.paths)),
            tags: by.tags.then(|| sorted(&s.tags)),
        };
        groups.entry(key).or_default().push(i);
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fixed "now" well after every test snapshot.
    fn now() -> jiff::Timestamp {
        "2030-01-01T00:00:00Z".parse().unwrap()
    }

    fn t(s: &str) -> SnapshotTime {
        SnapshotTime::parse(s).unwrap()
    }

    /// Runs `policy` over snapshots given as (time, tags) and returns the
    /// times of the kept ones, newest first, with their reasons.
    fn kept(policy: &Policy, snaps: &[(&str, &[&str])]) -> Vec<(String, Vec<String>)> {
        let tags: Vec<Vec<String>> = snaps.iter().map(|(_, t)| t.iter().map(|s| s.to_string()).collect()).collect();
        let group: Vec<(SnapshotTime, &[String])> =
            snaps.iter().zip(&tags).map(|((time, _), tags)| (t(time), tags.as_slice())).collect();
        apply(policy, &group, now())
            .into_iter()
            .filter(Verdict::keep)
            .map(|v| (snaps[v.index].0.to_string(), v.reasons))
            .collect()
    }

    fn times(k: &[(String, Vec<String>)]) -> Vec<&str> {
        k.iter().map(|(t, _)| t.as_str()).collect()
    }

    /// Twelve Sunday backups at 11:00 UTC, restic's documentation example.
    const SUNDAYS: [(&str, &[&str]); 12] = [
        ("2019-09-01T11:00:00Z", &[]),
        ("2019-09-08T11:00:00Z", &[]),
        ("2019-09-15T11:00:00Z", &[]),
        ("2019-09-22T11:00:00Z", &[]),
        ("2019-09-29T11:00:00Z", &[]),
        ("2019-10-06T11:00:00Z", &[]),
        ("2019-10-13T11:00:00Z", &[]),
        ("2019-10-20T11:00:00Z", &[]),
        ("2019-10-27T11:00:00Z", &[]),
        ("2019-11-03T11:00:00Z", &[]),
        ("2019-11-10T11:00:00Z", &[]),
        ("2019-11-17T11:00:00Z", &[]),
    ];

    #[test]
    fn durations_parse_as_restic() {
        assert_eq!("1y2m3d4h".parse::<Duration>().unwrap(), Duration { years: 1, months: 2, days: 3, hours: 4 });
        assert_eq!("36h".parse::<Duration>().unwrap(), Duration { hours: 36, ..Duration::default() });
        assert_eq!("2d1y".parse::<Duration>().unwrap(), Duration { years: 1, days: 2, ..Duration::default() });
        for bad in ["", "1w", "y", "5", "1d2", "-1d", "1.5d"] {
            assert!(bad.parse::<Duration>().is_err(), "{bad:?} was accepted");
        }
        assert_eq!("1y2m3d4h".parse::<Duration>().unwrap().to_string(), "1y2m3d4h");
        assert_eq!(parse_count("unlimited").unwrap(), UNLIMITED);
        assert!(parse_count("-1").is_err());
    }

    #[test]
    fn empty_policy_is_detected() {
        assert!(Policy::default().is_empty());
        assert!(Policy { within: Some(Duration::default()), ..Policy::default() }.is_empty());
        assert!(!Policy { last: 1, ..Policy::default() }.is_empty());
        assert!(!Policy { tags: vec![vec!["x".into()]], ..Policy::default() }.is_empty());
    }

    #[test]
    fn keep_last() {
        let k = kept(&Policy { last: 3, ..Policy::default() }, &SUNDAYS);
        // The three newest, each as "last snapshot".
        assert_eq!(times(&k), ["2019-11-17T11:00:00Z", "2019-11-10T11:00:00Z", "2019-11-03T11:00:00Z"]);
        assert!(k.iter().all(|(_, r)| r == &["last snapshot"]));
        // More than there are: all kept, the oldest by the normal rule.
        let k = kept(&Policy { last: 20, ..Policy::default() }, &SUNDAYS);
        assert_eq!(k.len(), 12);
        assert_eq!(kept(&Policy { last: UNLIMITED, ..Policy::default() }, &SUNDAYS).len(), 12);
    }

    #[test]
    fn keep_daily_restic_documentation_example() {
        // restic's manual: `--keep-daily 4` over twelve Sundays keeps the
        // last four Sundays (each is its own day).
        let k = kept(&Policy { daily: 4, ..Policy::default() }, &SUNDAYS);
        assert_eq!(
            times(&k),
            ["2019-11-17T11:00:00Z", "2019-11-10T11:00:00Z", "2019-11-03T11:00:00Z", "2019-10-27T11:00:00Z"]
        );
    }

    #[test]
    fn keep_hourly_takes_the_newest_of_each_hour() {
        let snaps: [(&str, &[&str]); 5] = [
            ("2024-05-01T10:05:00Z", &[]),
            ("2024-05-01T10:50:00Z", &[]), // newest of 10:00
            ("2024-05-01T11:10:00Z", &[]),
            ("2024-05-01T11:40:00Z", &[]), // newest of 11:00
            ("2024-05-01T13:00:00Z", &[]), // only one at 13:00
        ];
        // Two hours: 13:00 and 11:00 (the hour 12 has no snapshot and does not count).
        let k = kept(&Policy { hourly: 2, ..Policy::default() }, &snaps);
        assert_eq!(times(&k), ["2024-05-01T13:00:00Z", "2024-05-01T11:40:00Z"]);
        // Three hours: also 10:50.
        let k = kept(&Policy { hourly: 3, ..Policy::default() }, &snaps);
        assert_eq!(times(&k), ["2024-05-01T13:00:00Z", "2024-05-01T11:40:00Z", "2024-05-01T10:50:00Z"]);
    }

    #[test]
    fn buckets_use_the_recorded_local_time() {
        // 23:30 at +02:00 on the 1st is 21:30 UTC: still the 1st locally. The
        // second snapshot is 00:30 on the 2nd locally, although 22:30 UTC on
        // the 1st. In UTC both would share a day; locally they do not.
        let snaps: [(&str, &[&str]); 2] = [("2024-05-01T23:30:00+02:00", &[]), ("2024-05-02T00:30:00+02:00", &[])];
        let k = kept(&Policy { daily: 2, ..Policy::default() }, &snaps);
        assert_eq!(times(&k), ["2024-05-02T00:30:00+02:00", "2024-05-01T23:30:00+02:00"]);
        assert!(k.iter().all(|(_, r)| r == &["daily snapshot"]), "{k:?}");
    }

    #[test]
    fn rules_with_periods_left_also_keep_the_oldest() {
        // Three snapshots on one day; keep-daily 5 has periods left at the
        // oldest, which restic keeps too, marked "oldest daily snapshot".
        let snaps: [(&str, &[&str]); 3] =
            [("2024-05-01T08:00:00Z", &[]), ("2024-05-01T12:00:00Z", &[]), ("2024-05-01T18:00:00Z", &[])];
        let k = kept(&Policy { daily: 5, ..Policy::default() }, &snaps);
        assert_eq!(
            k,
            vec![
                ("2024-05-01T18:00:00Z".to_string(), vec!["daily snapshot".to_string()]),
                ("2024-05-01T08:00:00Z".to_string(), vec!["oldest daily snapshot".to_string()]),
            ]
        );
        // keep-daily 1 has no period left at the oldest: only the newest.
        let k = kept(&Policy { daily: 1, ..Policy::default() }, &snaps);
        assert_eq!(times(&k), ["2024-05-01T18:00:00Z"]);
    }

    #[test]
    fn keep_weekly_uses_iso_weeks() {
        // Sunday 2024-01-07 ends ISO week 1; Monday 2024-01-08 starts week 2.
        // Sunday 2023-12-31 is in ISO week 52 of 2023; Monday 2024-01-01 in week 1 of 2024.
        let snaps: [(&str, &[&str]); 4] = [
            ("2023-12-31T12:00:00Z", &[]), // week 2023-52
            ("2024-01-01T12:00:00Z", &[]), // week 2024-01
            ("2024-01-07T12:00:00Z", &[]), // week 2024-01, newest of it
            ("2024-01-08T12:00:00Z", &[]), // week 2024-02
        ];
        let k = kept(&Policy { weekly: 3, ..Policy::default() }, &snaps);
        assert_eq!(times(&k), ["2024-01-08T12:00:00Z", "2024-01-07T12:00:00Z", "2023-12-31T12:00:00Z"]);
        let k = kept(&Policy { weekly: 2, ..Policy::default() }, &snaps);
        assert_eq!(times(&k), ["2024-01-08T12:00:00Z", "2024-01-07T12:00:00Z"]);
    }

    #[test]
    fn keep_monthly_and_yearly() {
        let snaps: [(&str, &[&str]); 6] = [
            ("2022-06-15T12:00:00Z", &[]), // 2022
            ("2022-12-31T12:00:00Z", &[]), // newest of 2022, and of 2022-12
            ("2023-03-01T12:00:00Z", &[]),
            ("2023-03-20T12:00:00Z", &[]), // newest of 2023-03
            ("2023-11-02T12:00:00Z", &[]), // newest of 2023-11 and of 2023
            ("2024-02-10T12:00:00Z", &[]), // newest of 2024-02 and of 2024
        ];
        let k = kept(&Policy { monthly: 3, ..Policy::default() }, &snaps);
        assert_eq!(times(&k), ["2024-02-10T12:00:00Z", "2023-11-02T12:00:00Z", "2023-03-20T12:00:00Z"]);
        // Four years asked, three exist: each year's newest plus the oldest.
        let k = kept(&Policy { yearly: 4, ..Policy::default() }, &snaps);
        assert_eq!(
            times(&k),
            ["2024-02-10T12:00:00Z", "2023-11-02T12:00:00Z", "2022-12-31T12:00:00Z", "2022-06-15T12:00:00Z"]
        );
        assert_eq!(k[3].1, ["oldest yearly snapshot"]);
    }

    #[test]
    fn keep_within_counts_back_from_the_newest_snapshot() {
        // The newest is 2019-11-17 11:00; 14 days back is 2019-11-03 11:00,
        // and only snapshots strictly after that instant are within.
        let p = Policy { within: Some("14d".parse().unwrap()), ..Policy::default() };
        let k = kept(&p, &SUNDAYS);
        assert_eq!(times(&k), ["2019-11-17T11:00:00Z", "2019-11-10T11:00:00Z"]);
        assert!(k.iter().all(|(_, r)| r == &["within 14d"]));
        // 14d1h reaches past 2019-11-03 11:00.
        let p = Policy { within: Some("14d1h".parse().unwrap()), ..Policy::default() };
        assert_eq!(kept(&p, &SUNDAYS).len(), 3);
        // One month back from 2019-11-17 is 2019-10-17: three October Sundays follow it.
        let p = Policy { within: Some("1m".parse().unwrap()), ..Policy::default() };
        assert_eq!(
            times(&kept(&p, &SUNDAYS)),
            [
                "2019-11-17T11:00:00Z",
                "2019-11-10T11:00:00Z",
                "2019-11-03T11:00:00Z",
                "2019-10-27T11:00:00Z",
                "2019-10-20T11:00:00Z"
            ]
        );
    }

    #[test]
    fn keep_within_ignores_future_snapshots_as_the_newest() {
        // The 2031 snapshot is after "now": the newest is 2024-05-10, and
        // 2d back is 2024-05-08 12:00. The future one is kept (within), the
        // 2024-05-01 one is not.
        let snaps: [(&str, &[&str]); 3] =
            [("2024-05-01T12:00:00Z", &[]), ("2024-05-10T12:00:00Z", &[]), ("2031-01-01T00:00:00Z", &[])];
        let p = Policy { within: Some("2d".parse().unwrap()), ..Policy::default() };
        assert_eq!(times(&kept(&p, &snaps)), ["2031-01-01T00:00:00Z", "2024-05-10T12:00:00Z"]);
    }

    #[test]
    fn month_arithmetic_is_gos() {
        // Go: 2024-03-31 AddDate(0,-1,0) = 2024-02-31 = 2024-03-02.
        let d = Duration { months: 1, ..Duration::default() };
        let t: jiff::Timestamp = "2024-03-31T10:00:00Z".parse().unwrap();
        assert_eq!(d.before(t, Offset::UTC).unwrap().to_string(), "2024-03-02T10:00:00Z");
        // Years, days and hours together, across a year boundary.
        let d: Duration = "1y2m3d4h".parse().unwrap();
        let t: jiff::Timestamp = "2024-01-02T03:00:00Z".parse().unwrap();
        assert_eq!(d.before(t, Offset::UTC).unwrap().to_string(), "2022-10-29T23:00:00Z");
    }

    #[test]
    fn keep_within_periods() {
        // Newest is 2024-05-10 20:00. within-daily 3d reaches back to
        // 2024-05-07 20:00 (exclusive): of the snapshots after that, the
        // newest of each day is kept: 05-10 20:00, 05-09 18:00, 05-08 09:00.
        // 05-07 21:00 is also after the cutoff and the newest of its day.
        // 05-06 is outside; the oldest snapshot is outside, so not kept.
        let snaps: [(&str, &[&str]); 7] = [
            ("2024-05-06T12:00:00Z", &[]),
            ("2024-05-07T21:00:00Z", &[]),
            ("2024-05-08T09:00:00Z", &[]),
            ("2024-05-09T08:00:00Z", &[]),
            ("2024-05-09T18:00:00Z", &[]),
            ("2024-05-10T07:00:00Z", &[]),
            ("2024-05-10T20:00:00Z", &[]),
        ];
        let p = Policy { within_periods: [None, Some("3d".parse().unwrap()), None, None, None], ..Policy::default() };
        let k = kept(&p, &snaps);
        assert_eq!(
            times(&k),
            ["2024-05-10T20:00:00Z", "2024-05-09T18:00:00Z", "2024-05-08T09:00:00Z", "2024-05-07T21:00:00Z"]
        );
        assert!(k.iter().all(|(_, r)| r == &["daily within 3d"]), "{k:?}");
        // within-monthly 1y keeps one per month and, as the oldest snapshot
        // is within and shares a month already kept, the oldest as well.
        let p = Policy { within_periods: [None, None, None, Some("1y".parse().unwrap()), None], ..Policy::default() };
        let k = kept(&p, &snaps);
        assert_eq!(
            k,
            vec![
                ("2024-05-10T20:00:00Z".to_string(), vec!["monthly within 1y".to_string()]),
                ("2024-05-06T12:00:00Z".to_string(), vec!["oldest monthly within 1y".to_string()]),
            ]
        );
        assert!(!p.is_empty());
    }

    #[test]
    fn keep_tag_lists() {
        let snaps: [(&str, &[&str]); 4] = [
            ("2024-05-01T12:00:00Z", &["a"]),
            ("2024-05-02T12:00:00Z", &["a", "b"]),
            ("2024-05-03T12:00:00Z", &[]),
            ("2024-05-04T12:00:00Z", &["b"]),
        ];
        // One list needing both a and b.
        let p = Policy { tags: vec![vec!["a".into(), "b".into()]], ..Policy::default() };
        assert_eq!(times(&kept(&p, &snaps)), ["2024-05-02T12:00:00Z"]);
        // Two lists: a, or b.
        let p = Policy { tags: vec![vec!["a".into()], vec!["b".into()]], ..Policy::default() };
        let k = kept(&p, &snaps);
        assert_eq!(times(&k), ["2024-05-04T12:00:00Z", "2024-05-02T12:00:00Z", "2024-05-01T12:00:00Z"]);
        assert_eq!(k[1].1, ["tagged [a]", "tagged [b]"], "each matching list is a reason");
        // The empty tag: untagged snapshots.
        let p = Policy { tags: vec![vec![String::new()]], ..Policy::default() };
        assert_eq!(times(&kept(&p, &snaps)), ["2024-05-03T12:00:00Z"]);
    }

    #[test]
    fn rules_combine_and_all_reasons_are_reported() {
        // restic's example shape: keep-last 1, keep-daily 2, keep-weekly 2,
        // keep-monthly 2 over the Sundays.
        let p = Policy { last: 1, daily: 2, weekly: 2, monthly: 2, ..Policy::default() };
        let k = kept(&p, &SUNDAYS);
        // 11-17: last, daily, weekly, monthly (newest of November).
        // 11-10: daily, weekly. 10-27: monthly (newest of October).
        assert_eq!(times(&k), ["2019-11-17T11:00:00Z", "2019-11-10T11:00:00Z", "2019-10-27T11:00:00Z"]);
        assert_eq!(k[0].1, ["last snapshot", "daily snapshot", "weekly snapshot", "monthly snapshot"]);
        assert_eq!(k[1].1, ["daily snapshot", "weekly snapshot"]);
        assert_eq!(k[2].1, ["monthly snapshot"]);

        // Tags and within with a count: 09-01 kept only for its tag.
        let mut snaps = SUNDAYS;
        snaps[0].1 = &["keep"];
        let p = Policy {
            last: 1,
            within: Some("7d".parse().unwrap()),
            tags: vec![vec!["keep".into()]],
            ..Policy::default()
        };
        let k = kept(&p, &snaps);
        // 7d back from 11-17 11:00 is 11-10 11:00, not strictly after: only 11-17 within.
        assert_eq!(times(&k), ["2019-11-17T11:00:00Z", "2019-09-01T11:00:00Z"]);
        assert_eq!(k[0].1, ["within 7d", "last snapshot"]);
        assert_eq!(k[1].1, ["tagged [keep]"]);
    }

    #[test]
    fn groups_by_host_paths_and_tags() {
        let snap = |host: &str, paths: &[&str], tags: &[&str]| Snapshot {
            version: crate::snapshot::SNAPSHOT_VERSION,
            time: "2024-01-01T00:00:00Z".into(),
            host: host.into(),
            user: String::new(),
            uid: 0,
            gid: 0,
            paths: paths.iter().map(|s| s.to_string()).collect(),
            tags: tags.iter().map(|s| s.to_string()).collect(),
            tree: crate::Id([0; 32]),
            parent: None,
            host_sequence: 0,
            host_previous: None,
            original: None,
            summary: Default::default(),
            program_version: String::new(),
        };
        let snaps = [snap("a", &["/x", "/y"], &["t"]), snap("a", &["/y", "/x"], &[]), snap("b", &["/x", "/y"], &["t"])];
        let g = group(&snaps, GroupBy::default());
        assert_eq!(g.values().cloned().collect::<Vec<_>>(), [vec![0, 1], vec![2]], "path order does not matter");
        let g = group(&snaps, "paths,tags".parse().unwrap());
        assert_eq!(g.values().cloned().collect::<Vec<_>>(), [vec![1], vec![0, 2]]);
        let g = group(&snaps, "".parse().unwrap());
        assert_eq!(g.values().cloned().collect::<Vec<_>>(), [vec![0, 1, 2]]);
        assert!("hosts".parse::<GroupBy>().is_err());
    }
}
