//! `coffer forget`: remove named snapshots, or those a retention policy does
//! not keep. Only snapshot objects are deleted; the chunks and trees they
//! referenced stay until a prune (`--prune` runs one right after).

use anyhow::{Result, bail};
use coffer_core::Id;
use coffer_core::policy::{self, GroupBy, GroupKey, Policy, SnapshotTime};
use coffer_core::snapshot::{Snapshot, SnapshotFilter};
use serde::Serialize;

use crate::cli::{ForgetArgs, GlobalArgs};
use crate::exit;
use crate::output::{local_time, table};

#[derive(Serialize)]
struct Decision<'a> {
    id: String,
    short_id: String,
    time: &'a str,
    host: &'a str,
    paths: &'a [String],
    tags: &'a [String],
    keep: bool,
    /// The rules that keep it; empty when it is removed.
    reasons: Vec<String>,
}

#[derive(Serialize)]
struct Group<'a> {
    group: GroupKey,
    snapshots: Vec<Decision<'a>>,
}

#[derive(Serialize)]
struct Report<'a> {
    dry_run: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    policy: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    groups: Vec<Group<'a>>,
    /// Ids removed (or, in a dry run, that would be).
    removed: Vec<String>,
    /// Snapshots the policy removes that Object Lock still retains: kept,
    /// with the time (seconds since the epoch) their retention ends.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    retained: Vec<(String, i64)>,
}

pub fn run(g: &GlobalArgs, a: &ForgetArgs) -> Result<u8> {
    let policy = Policy {
        last: a.keep_last,
        hourly: a.keep_hourly,
        daily: a.keep_daily,
        weekly: a.keep_weekly,
        monthly: a.keep_monthly,
        yearly: a.keep_yearly,
        within: a.keep_within,
        within_periods: [
            a.keep_within_hourly,
            a.keep_within_daily,
            a.keep_within_weekly,
            a.keep_within_monthly,
            a.keep_within_yearly,
        ],
        tags: super::tag_lists(&a.keep_tags),
    };
    let group_by: GroupBy = a.group_by.parse()?;
    let filter = SnapshotFilter { hosts: a.hosts.clone(), tags: super::tag_lists(&a.tags), paths: a.paths.clone() };
    if !a.snapshots.is_empty() && !policy.is_empty() {
        bail!("give either snapshots to remove or --keep-* options, not both");
    }
    if a.snapshots.is_empty() && policy.is_empty() {
        bail!(
            "no policy given (--keep-last, --keep-daily, …, --keep-within, --keep-within-daily, …, --keep-tag) and no snapshot named: nothing removed"
        );
    }
    let repo = crate::repository::open(g)?;
    // Forget holds a shared lock, as backup does: prune's delete phase
    // (exclusive) then never runs while snapshots are being removed.
    let lock = if a.dry_run { None } else { Some(repo.lock_shared(coffer_core::lock::FORGET)?) };

    let (mut removed, groups, all) = if a.snapshots.is_empty() {
        let mut all = repo.snapshots()?;
        all.retain(|(_, s)| filter.matches(s));
        let (removed, groups) = plan(&policy, &all, group_by)?;
        (removed, groups, all)
    } else {
        let mut removed: Vec<Id> = Vec::new();
        for spec in &a.snapshots {
            let (id, _) = repo.find_snapshot_filtered(spec, |s| filter.matches(s))?;
            if !removed.contains(&id) {
                removed.push(id);
            }
        }
        (removed, Vec::new(), Vec::new())
    };

    let report_groups: Vec<Group> = groups
        .into_iter()
        .map(|(key, verdicts)| Group {
            group: key,
            snapshots: verdicts
                .into_iter()
                .map(|(i, reasons)| {
                    let (id, s) = &all[i];
                    Decision {
                        id: id.to_hex(),
                        short_id: id.short(),
                        time: &s.time,
                        host: &s.host,
                        paths: &s.paths,
                        tags: &s.tags,
                        keep: !reasons.is_empty(),
                        reasons,
                    }
                })
                .collect(),
        })
        .collect();

    if !g.json && !g.quiet {
        if !report_groups.is_empty() {
            println!("Applying policy: {policy}");
        }
        for group in &report_groups {
            println!();
            println!("snapshots of {}:", group.group);
            let rows: Vec<Vec<String>> = group
                .snapshots
                .iter()
                .map(|d| {
                    vec![
                        d.short_id.clone(),
                        local_time(d.time),
                        d.host.to_string(),
                        d.tags.join(","),
                        if d.keep { format!("keep: {}", d.reasons.join(", ")) } else { "remove".into() },
                        d.paths.join(" "),
                    ]
                })
                .collect();
            print!("{}", table(&["ID", "Time", "Host", "Tags", "Decision", "Paths"], &rows));
        }
    }

    // Object Lock: what is still retained cannot be removed yet.
    let keys: Vec<String> =
        removed.iter().map(|id| coffer_core::repo::object_key(coffer_core::crypto::ObjectKind::Snapshot, id)).collect();
    let held = coffer_core::retention::still_retained(&repo, &keys)?;
    let mut retained: Vec<(String, i64)> = Vec::new();
    removed.retain(|id| {
        let key = coffer_core::repo::object_key(coffer_core::crypto::ObjectKind::Snapshot, id);
        match held.get(&key) {
            Some(&until) => {
                retained.push((id.to_hex(), until));
                false
            }
            None => true,
        }
    });
    if !g.json && !g.quiet {
        for (id, until) in &retained {
            println!(
                "kept snapshot {}: Object Lock retains it until {}; forget it again after then",
                &id[..8],
                coffer_core::retention::date(*until)
            );
        }
    }
    for id in &removed {
        if let Some(lock) = &lock {
            lock.alive()?;
            repo.remove_snapshot(id)?;
            repo.forgotten(std::slice::from_ref(id));
        }
        if !g.json && !g.quiet {
            let verb = if a.dry_run { "would remove" } else { "removed" };
            println!("{verb} snapshot {}", id.short());
        }
    }
    if let Some(lock) = lock
        && let Err(e) = lock.release()
    {
        tracing::warn!("could not remove forget's lock: {e}");
    }
    if g.json {
        super::print_json(&Report {
            dry_run: a.dry_run,
            policy: (!policy.is_empty()).then(|| policy.to_string()),
            groups: report_groups,
            removed: removed.iter().map(Id::to_hex).collect(),
            retained,
        })?;
    } else if !g.quiet && removed.is_empty() {
        println!("no snapshot removed");
    }
    if a.prune {
        // After the snapshots are gone; a dry run marks as if they were.
        if !g.json && !g.quiet {
            println!();
        }
        let options = coffer_core::prune::PruneOptions {
            assume_forgotten: if a.dry_run { removed.clone() } else { Vec::new() },
            ..a.repack.options(a.dry_run)
        };
        let outcome = coffer_core::prune::prune(&repo, &options)?;
        super::prune::report(g, &outcome, a.dry_run)?;
    }
    Ok(exit::OK)
}

/// The verdicts of a policy per group (snapshot index into `all` and the
/// reasons it is kept, newest first) and the snapshots to remove. Refuses,
/// before anything is removed, a policy that would empty a group.
#[allow(clippy::type_complexity)]
fn plan(
    policy: &Policy,
    all: &[(Id, Snapshot)],
    group_by: GroupBy,
) -> Result<(Vec<Id>, Vec<(GroupKey, Vec<(usize, Vec<String>)>)>)> {
    let now = jiff::Timestamp::now();
    let mut removed = Vec::new();
    let mut out = Vec::new();
    for (key, members) in policy::group(all.iter().map(|(_, s)| s), group_by) {
        let times = members
            .iter()
            .map(|&i| SnapshotTime::parse(&all[i].1.time).map(|t| (t, all[i].1.tags.as_slice())))
            .collect::<coffer_core::Result<Vec<_>>>()?;
        let verdicts = policy::apply(policy, &times, now);
        if verdicts.iter().all(|v| !v.keep()) {
            bail!("refusing to remove every snapshot of {key}: the policy keeps none of them; nothing removed");
        }
        let mut decided = Vec::new();
        for v in verdicts {
            let i = members[v.index];
            if !v.keep() {
                removed.push(all[i].0);
            }
            decided.push((i, v.reasons));
        }
        out.push((key, decided));
    }
    Ok((removed, out))
}
