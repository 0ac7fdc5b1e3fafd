use anyhow::Result;
use coffer_core::restorer::{self, Overwrite, RestoreOptions};
use serde::Serialize;

use crate::cli::{GlobalArgs, OverwriteArg, RestoreArgs};
use crate::exit;
use crate::output::bytes;
use crate::progress::Bar;

#[derive(Serialize)]
struct Report {
    snapshot_id: String,
    files: u64,
    dirs: u64,
    symlinks: u64,
    hardlinks: u64,
    bytes: u64,
    skipped: u64,
    skipped_bytes: u64,
    /// Entries deleted from the target because the snapshot lacks them (`--delete`).
    #[serde(skip_serializing_if = "Option::is_none")]
    deleted: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    verified_files: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    verified_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    verify_failures: Option<u64>,
    errors: Vec<String>,
    /// Requests and bytes this command cost, from opening the repository on.
    wire: coffer_core::backend::WireStats,
}

pub fn run(g: &GlobalArgs, a: &RestoreArgs) -> Result<u8> {
    let repo = crate::repository::open(g)?;
    let (id, snap) = repo.find_snapshot(&a.snapshot)?;
    if a.dry_run {
        return dry_run(g, a, &repo, &id, &snap);
    }
    // A store with storage classes may hold archived packs: find out which
    // this restore needs before reading any, so that it never stops half
    // way on the first one.
    if repo.backend().storage_classes().is_some()
        && let Some(code) = ready_archived(g, a, &repo, &snap)?
    {
        return Ok(code);
    }
    let overwrite = match a.overwrite {
        OverwriteArg::Always => Overwrite::Always,
        OverwriteArg::IfChanged => Overwrite::IfChanged,
        OverwriteArg::Never => Overwrite::Never,
    };
    let options = RestoreOptions {
        target: a.target.clone(),
        includes: a.includes.clone(),
        overwrite,
        verify: a.verify,
        delete: a.delete,
        ..RestoreOptions::default()
    };
    let bar = Bar::new(!g.quiet && !g.json, "restore");
    let start = std::time::Instant::now();
    let result = restorer::restore(&repo, &snap.tree, &options, &bar);
    bar.finish();
    let outcome = result?;
    if g.json {
        super::print_json(&Report {
            snapshot_id: id.to_hex(),
            files: outcome.files,
            dirs: outcome.dirs,
            symlinks: outcome.symlinks,
            hardlinks: outcome.hardlinks,
            bytes: outcome.bytes,
            skipped: outcome.skipped,
            skipped_bytes: outcome.skipped_bytes,
            deleted: a.delete.then_some(outcome.deleted),
            verified_files: a.verify.then_some(outcome.verified_files),
            verified_bytes: a.verify.then_some(outcome.verified_bytes),
            verify_failures: a.verify.then_some(outcome.verify_failures),
            errors: outcome.problems.iter().map(|p| format!("{}: {}", p.path.display(), p.message)).collect(),
            wire: repo.backend().wire_stats(),
        })?;
    } else if !g.quiet {
        let mut line = format!(
            "restored snapshot {} to {}: {} files, {} dirs, {} symlinks",
            id.short(),
            a.target.display(),
            outcome.files,
            outcome.dirs,
            outcome.symlinks
        );
        if outcome.hardlinks > 0 {
            line.push_str(&format!(", {} hard links", outcome.hardlinks));
        }
        line.push_str(&format!(", {} in {:.1} s", bytes(outcome.bytes), start.elapsed().as_secs_f64()));
        println!("{line}");
        println!("requests: {}", crate::output::wire(&repo.backend().wire_stats()));
        if a.delete {
            println!("deleted {} entries of the target that the snapshot does not have", outcome.deleted);
        }
        if outcome.skipped > 0 {
            println!(
                "left {} existing entries as they were ({} of unchanged files)",
                outcome.skipped,
                bytes(outcome.skipped_bytes)
            );
        }
        if a.verify {
            if outcome.verify_failures == 0 {
                println!(
                    "verified {} files ({}): all as in the snapshot",
                    outcome.verified_files,
                    bytes(outcome.verified_bytes)
                );
            } else {
                println!(
                    "verified {} files ({}); {} differ from the snapshot",
                    outcome.verified_files,
                    bytes(outcome.verified_bytes),
                    outcome.verify_failures
                );
            }
        }
    }
    if !outcome.problems.is_empty() {
        // Warnings were printed as they happened; repeat a count at the end.
        if outcome.verify_failures > 0 {
            eprintln!("error: {} files failed verification", outcome.verify_failures);
        }
        let others = outcome.problems.len() as u64 - outcome.verify_failures;
        if others > 0 {
            eprintln!("error: {others} entries were not restored correctly");
        }
        return Ok(exit::FATAL);
    }
    Ok(exit::OK)
}

/// Makes sure the archived packs the restore needs are readable: with
/// `--warm-up`, by asking for them and waiting (or exiting with
/// [`exit::WAITING`] under `--no-wait`); without, by refusing with what to
/// do. `None` when the restore can go on.
fn ready_archived(
    g: &GlobalArgs,
    a: &RestoreArgs,
    repo: &coffer_core::Repository,
    snap: &coffer_core::snapshot::Snapshot,
) -> Result<Option<u8>> {
    use coffer_core::retrieval;
    // Nothing archived, nothing to plan: the index loaded here is the one
    // the restore uses, so this costs no request of its own.
    let archived = retrieval::archived_packs(repo)?;
    if archived.is_empty() {
        return Ok(None);
    }
    let plan = retrieval::plan_with(repo, &snap.tree, &a.includes, &archived)?;
    let archived = plan.archived().count();
    if archived == 0 {
        return Ok(None);
    }
    let Some(tier) = a.warm_up else {
        let ready = retrieval::readable_now(repo, &plan)?;
        if ready == archived {
            return Ok(None);
        }
        anyhow::bail!(
            "{} of the {} packs this restore reads ({}) are archived and not restored yet: run it with --warm-up \
             (cheapest: --warm-up=bulk) to ask for them and wait; --dry-run shows what that costs",
            archived - ready,
            plan.packs.len(),
            bytes(plan.archived().map(|p| p.length).sum())
        );
    };
    let base = coffer_core::state::default_base()
        .ok_or_else(|| anyhow::anyhow!("no folder for the warm-up state: set COFFER_STATE_DIR or HOME"))?;
    let mut state = retrieval::WarmUpState::load(&base, repo.repo_id());
    let poll = std::time::Duration::from_secs(a.warm_up_poll.max(1));
    loop {
        let report = retrieval::warm_up(repo, &plan, tier, a.warm_up_days, &mut state)?;
        if report.is_ready() {
            if !g.quiet && !g.json {
                println!("all {} archived packs this restore reads are restored; restoring", report.packs);
            }
            return Ok(None);
        }
        if !g.quiet && !g.json {
            let since = report
                .oldest_request
                .map(|at| {
                    let hours = (jiff::Timestamp::now().as_second() - at) as f64 / 3600.0;
                    format!(", the oldest request {hours:.1} h ago")
                })
                .unwrap_or_default();
            println!(
                "warm-up ({}): {} of {} archived packs ({}) are readable, {} being restored ({} asked for now{since})",
                tier.name(),
                report.ready,
                report.packs,
                bytes(report.bytes),
                report.restoring,
                report.requested_now
            );
        }
        if a.no_wait {
            if g.json {
                super::print_json(&report)?;
            } else if !g.quiet {
                println!(
                    "not waiting (--no-wait): run the same command again to go on; the requests are remembered in {}",
                    state.path().display()
                );
            }
            return Ok(Some(exit::WAITING));
        }
        std::thread::sleep(poll);
    }
}

#[derive(Serialize)]
struct DryRun<'a> {
    snapshot_id: String,
    #[serde(flatten)]
    plan: &'a coffer_core::retrieval::RetrievalPlan,
    archived_packs: usize,
    archived_bytes: u64,
    currency: String,
    /// Retrieval tier → estimated cost of retrieving the archived packs
    /// (requests, retrieval, restored copies kept, download).
    retrieval_cost: std::collections::BTreeMap<String, f64>,
    wire: coffer_core::backend::WireStats,
}

/// `restore --dry-run`: the packs the restore reads, and what retrieving
/// the archived ones costs.
fn dry_run(
    g: &GlobalArgs,
    a: &RestoreArgs,
    repo: &coffer_core::Repository,
    id: &coffer_core::id::Id,
    snap: &coffer_core::snapshot::Snapshot,
) -> Result<u8> {
    use coffer_core::backend::RetrievalTier;
    let plan = coffer_core::retrieval::plan(repo, &snap.tree, &a.includes)?;
    let table = crate::prices::load(a.prices.as_deref())?;
    let archived: Vec<_> = plan.archived().collect();
    let archived_bytes: u64 = archived.iter().map(|p| p.length).sum();
    // Each archived pack is priced in its own class.
    let mut costs: std::collections::BTreeMap<String, f64> = std::collections::BTreeMap::new();
    for tier in RetrievalTier::ALL {
        let mut total = Some(0.0);
        for p in &archived {
            let one = coffer_core::pricing::read_back(
                &table,
                p.storage_class.as_deref(),
                Some(tier),
                a.warm_up_days,
                1,
                p.length,
            );
            total = total.zip(one).map(|(t, o)| t + o);
        }
        if let Some(t) = total.filter(|_| !archived.is_empty()) {
            costs.insert(tier.name().to_string(), t);
        }
    }
    if g.json {
        super::print_json(&DryRun {
            snapshot_id: id.to_hex(),
            plan: &plan,
            archived_packs: archived.len(),
            archived_bytes,
            currency: table.currency.clone(),
            retrieval_cost: costs,
            wire: repo.backend().wire_stats(),
        })?;
        return Ok(exit::OK);
    }
    println!(
        "restoring snapshot {} would write {} files ({}) from {} chunks in {} packs ({})",
        id.short(),
        plan.files,
        bytes(plan.bytes),
        plan.chunks,
        plan.packs.len(),
        bytes(plan.pack_bytes())
    );
    if plan.missing_chunks > 0 {
        eprintln!(
            "warning: {} of those chunks are missing from the repository; run `coffer check`",
            plan.missing_chunks
        );
    }
    const LISTED: usize = 50;
    for p in plan.packs.iter().take(if g.verbose > 0 { usize::MAX } else { LISTED }) {
        println!(
            "  pack {} {:>10} ({} of it needed) {}",
            p.id.short(),
            bytes(p.length),
            bytes(p.needed_bytes),
            p.storage_class.as_deref().unwrap_or("")
        );
    }
    if plan.packs.len() > LISTED && g.verbose == 0 {
        println!("  … and {} more (-v lists them all, --json too)", plan.packs.len() - LISTED);
    }
    if archived.is_empty() {
        println!("none of them is archived: a restore can read them at once");
        return Ok(exit::OK);
    }
    println!(
        "{} of the packs ({}) are archived: a restore needs --warm-up first. Estimated cost of retrieving them, \
         download and {} days of restored copies included ({}):",
        archived.len(),
        bytes(archived_bytes),
        a.warm_up_days,
        table.source
    );
    for tier in RetrievalTier::ALL {
        let time = archived
            .first()
            .and_then(|p| table.class(p.storage_class.as_deref()))
            .and_then(|c| c.restore.get(&tier))
            .map(|t| t.time.clone())
            .unwrap_or_default();
        match costs.get(tier.name()) {
            Some(c) => {
                println!("  --warm-up={:<10} {} ({time})", tier.name(), crate::prices::money(*c, &table.currency))
            }
            None => println!("  --warm-up={:<10} not offered for this class", tier.name()),
        }
    }
    Ok(exit::OK)
}
