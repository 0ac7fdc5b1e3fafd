//! Command-line syntax. Names follow restic's where it has one.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "coffer",
    version,
    about = "Encrypted, deduplicated backups to a local folder or S3",
    max_term_width = 100
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug)]
pub struct GlobalArgs {
    /// Repository location: a folder path, `s3:BUCKET[/PREFIX]` (AWS), or
    /// `s3:http(s)://HOST[:PORT]/BUCKET[/PREFIX]` (S3-compatible store, path style)
    #[arg(short = 'r', long = "repo", env = "COFFER_REPOSITORY", global = true, value_name = "LOCATION")]
    pub repo: Option<String>,
    /// Read the password from the first line of this file
    #[arg(long, env = "COFFER_PASSWORD_FILE", global = true, value_name = "FILE")]
    pub password_file: Option<PathBuf>,
    /// Run this shell command and use the first line it prints as the password
    #[arg(long, env = "COFFER_PASSWORD_COMMAND", global = true, value_name = "COMMAND")]
    pub password_command: Option<String>,
    /// Upload at most this many KiB per second (object bodies; as restic)
    #[arg(long, env = "COFFER_LIMIT_UPLOAD", global = true, value_name = "KIB/S",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub limit_upload: Option<u64>,
    /// Download at most this many KiB per second
    #[arg(long, env = "COFFER_LIMIT_DOWNLOAD", global = true, value_name = "KIB/S",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub limit_download: Option<u64>,
    /// Take defaults from this profile of ~/.config/coffer/profiles.toml (the `default` profile, if the file
    /// has one, is used without this option); the environment and flags override it
    #[arg(long, env = "COFFER_PROFILE", global = true, value_name = "NAME")]
    pub profile: Option<String>,
    /// Print machine-readable JSON instead of text
    #[arg(long, global = true)]
    pub json: bool,
    /// Print only errors and warnings; no progress
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// More log output (-v, -vv)
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Keep the local cache here (default: $COFFER_CACHE_DIR, else $XDG_CACHE_HOME/coffer, else ~/.cache/coffer)
    #[arg(long, global = true, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Use no local cache: read everything from the repository
    #[arg(long, global = true)]
    pub no_cache: bool,
    /// Wait up to this long for a lock held by another process (e.g. 30s, 10m, 1h; default: do not wait).
    /// Locks of a prune are always waited for: its exclusive phase is short
    #[arg(long, global = true, value_name = "DURATION", value_parser = parse_duration)]
    pub retry_lock: Option<std::time::Duration>,
    /// Seconds without a refresh after which a lock counts as stale (default 1800)
    #[arg(long, hide = true, env = "COFFER_LOCK_STALE_SECS", global = true, value_name = "SECONDS")]
    pub lock_stale_secs: Option<u64>,
    /// S3 region (default: from AWS_REGION or the AWS profile)
    #[arg(long, env = "COFFER_S3_REGION", global = true, value_name = "REGION")]
    pub s3_region: Option<String>,
    /// Use path-style S3 addressing (HOST/BUCKET/KEY); always on with an http(s):// endpoint
    #[arg(long, global = true)]
    pub s3_path_style: bool,
    /// S3 requests in flight at once
    #[arg(long, env = "COFFER_S3_CONNECTIONS", global = true, value_name = "N",
          default_value_t = coffer_core::backend::s3::DEFAULT_CONNECTIONS)]
    pub s3_connections: usize,
    /// S3 storage class for data packs (file contents) only: STANDARD_IA, INTELLIGENT_TIERING, GLACIER_IR,
    /// or the archive classes GLACIER and DEEP_ARCHIVE. Given to `init`, the repository records it and
    /// every later command uses it; given to another command, it applies to that command's uploads
    #[arg(long, env = "COFFER_S3_STORAGE_CLASS", global = true, value_name = "CLASS")]
    pub s3_storage_class: Option<String>,
    /// Attempts per S3 request before giving up
    #[arg(long, hide = true, env = "COFFER_S3_MAX_ATTEMPTS", global = true, value_name = "N",
          default_value_t = coffer_core::backend::s3::DEFAULT_MAX_ATTEMPTS)]
    pub s3_max_attempts: u32,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create a new repository
    #[command(
        after_help = "Examples:\n  coffer -r ~/coffer-repo init\n  coffer -r s3:my-photos-backup/laptop init --create-bucket --s3-storage-class DEEP_ARCHIVE\n  coffer -r s3:my-photos-backup/laptop init --create-bucket --object-lock 30"
    )]
    Init(InitArgs),
    /// Back up files and directories into a new snapshot
    #[command(
        after_help = "Examples:\n  coffer backup ~/Pictures\n  coffer backup ~/Pictures ~/Documents --exclude '*.tmp' --tag nightly\n  coffer backup --dry-run -v ~/Pictures"
    )]
    Backup(BackupArgs),
    /// List snapshots
    #[command(after_help = "Examples:\n  coffer snapshots\n  coffer snapshots --host laptop --tag nightly --json")]
    Snapshots(SnapshotsArgs),
    /// List the files in a snapshot
    #[command(after_help = "Examples:\n  coffer ls latest\n  coffer ls latest /home/me/Pictures/2024 --long")]
    Ls(LsArgs),
    /// Restore a snapshot into a folder
    #[command(
        after_help = "Examples:\n  coffer restore latest --target /tmp/restored\n  coffer restore 3f2a9c1e --target /tmp/r --include /home/me/Pictures/2024\n  coffer restore latest --target /tmp/r --dry-run      # packs, archived ones, retrieval cost\n  coffer restore latest --target /tmp/r --warm-up=bulk --no-wait\n  coffer restore latest --target ~/Pictures --include /home/me/Pictures --overwrite if-changed --delete"
    )]
    Restore(RestoreArgs),
    /// Write a file of a snapshot to standard output, or a folder as a tar archive
    #[command(
        after_help = "Examples:\n  coffer dump latest /home/me/Pictures/2024/06/IMG_0042.jpg > IMG_0042.jpg\n  coffer dump latest /home/me/Pictures/2024 > 2024.tar"
    )]
    Dump(DumpArgs),
    /// Remove snapshots, named or by a retention policy (their data stays until a prune)
    #[command(
        after_help = "Examples:\n  coffer forget --keep-daily 7 --keep-weekly 5 --keep-monthly 12 --dry-run\n  coffer forget --keep-last 10 --prune\n  coffer forget 3f2a9c1e"
    )]
    Forget(ForgetArgs),
    /// Manage the repository's keys (passwords)
    #[command(subcommand)]
    #[command(after_help = "Examples:\n  coffer key list\n  coffer key add\n  coffer key passwd")]
    Key(KeyCommand),
    /// Sizes: as restored, distinct data, and stored; for some snapshots or all
    #[command(
        after_help = "Examples:\n  coffer stats\n  coffer stats latest --json\n  coffer stats --cost                   # monthly bill and read-back cost per storage class"
    )]
    Stats(StatsArgs),
    /// Show what changed between two snapshots
    #[command(after_help = "Examples:\n  coffer diff 3f2a9c1e latest\n  coffer diff 3f2a9c1e latest --metadata")]
    Diff(DiffArgs),
    /// Verify the repository: snapshots, index, pack headers, trees, chunks; with --read-data, every pack's bytes
    #[command(
        after_help = "Examples:\n  coffer check\n  coffer check --read-data-subset 1/7   # a seventh of the data each day: all of it in a week\n  coffer check --read-data"
    )]
    Check(CheckArgs),
    /// Browse the snapshots as a read-only folder (FUSE), until unmounted or interrupted
    #[cfg(all(feature = "mount", target_os = "linux"))]
    #[command(
        after_help = "Examples:\n  coffer mount ~/snapshots            # then: ls ~/snapshots/snapshots/latest\n  coffer mount ~/snapshots --allow-other"
    )]
    Mount(MountArgs),
    /// Delete the packs that hold nothing a snapshot references, and repack mostly-unused ones
    #[command(
        after_help = "Examples:\n  coffer prune --dry-run\n  coffer prune --max-unused 20 --max-repack 2G\n  coffer prune --repack-cold"
    )]
    Prune(PruneArgs),
    /// Repair a damaged repository: rebuild the index, salvage damaged packs, repair snapshots
    #[command(subcommand)]
    #[command(
        after_help = "Examples:\n  coffer repair index --dry-run\n  coffer repair packs\n  coffer repair snapshots --forget"
    )]
    Repair(RepairCommand),
    /// Remove paths from existing snapshots, writing new snapshots (the originals stay unless --forget)
    #[command(
        after_help = "Examples:\n  coffer rewrite --exclude '/home/me/Pictures/private' --dry-run\n  coffer rewrite --exclude '*.key' --forget && coffer prune"
    )]
    Rewrite(RewriteArgs),
    /// Remove stale locks (left by processes that are gone)
    #[command(after_help = "Examples:\n  coffer unlock\n  coffer unlock --remove-all")]
    Unlock(UnlockArgs),
    /// Find files and folders whose name (or, with a `/` in the pattern, whole path) matches, in every snapshot
    #[command(
        after_help = "Examples:\n  coffer find '*.jpg'\n  coffer find -i 'img_00*' --snapshot latest\n  coffer find '/home/*/Pictures/2024/**/*.raw' --json"
    )]
    Find(FindArgs),
    /// Add, remove or replace the tags of snapshots (each is written anew; the old one is removed)
    #[command(
        after_help = "Examples:\n  coffer tag --add keep-forever 3f2a9c1e\n  coffer tag --remove nightly --add weekly latest\n  coffer tag --set photos --dry-run"
    )]
    Tag(TagArgs),
    /// Print one repository object, decrypted, for debugging (JSON; a blob as raw bytes)
    #[command(
        after_help = "Examples:\n  coffer cat config\n  coffer cat snapshot latest\n  coffer cat tree 5e0c7a1b\n  coffer cat index 9a1c3f00\n  coffer cat pack 41d2e8aa\n  coffer cat blob 77aa0c1d > chunk.bin"
    )]
    Cat(CatArgs),
    /// Print a completion script for a shell (bash, zsh, fish, elvish, powershell)
    #[command(
        after_help = "Examples:\n  coffer completions bash > ~/.local/share/bash-completion/completions/coffer\n  coffer completions zsh > ~/.zfunc/_coffer\n  coffer completions fish > ~/.config/fish/completions/coffer.fish"
    )]
    Completions(CompletionsArgs),
    /// Write the manual pages (roff), generated from the same definitions as --help
    #[command(after_help = "Examples:\n  coffer man | man -l -\n  coffer man --dir ~/.local/share/man/man1")]
    Man(ManArgs),
    /// Print coffer's version, the repository format it writes and the features it was built with
    #[command(after_help = "Examples:\n  coffer version\n  coffer version --json")]
    Version,
}

#[derive(Args, Debug)]
pub struct FindArgs {
    /// A glob: `*`, `?`, `[abc]`, and `**` across folders. Without a `/` it is matched against names
    pub pattern: String,
    /// Match without regard to case
    #[arg(short = 'i', long)]
    pub ignore_case: bool,
    /// Search only this snapshot (id, unique prefix, or `latest`; repeatable); all by default
    #[arg(short = 's', long = "snapshot", value_name = "SNAPSHOT")]
    pub snapshots: Vec<String>,
}

#[derive(Args, Debug)]
pub struct TagArgs {
    /// Snapshots to change (id, unique prefix, or `latest`); all when none is given
    #[arg(value_name = "SNAPSHOT")]
    pub snapshots: Vec<String>,
    /// Add this tag (repeatable, or comma-separated)
    #[arg(long, value_delimiter = ',', value_name = "TAG")]
    pub add: Vec<String>,
    /// Remove this tag (repeatable, or comma-separated)
    #[arg(long, value_delimiter = ',', value_name = "TAG")]
    pub remove: Vec<String>,
    /// Replace all tags by these (repeatable, or comma-separated; `--set ''` removes every tag)
    #[arg(long, value_delimiter = ',', value_name = "TAG", conflicts_with_all = ["add", "remove"])]
    pub set: Option<Vec<String>>,
    /// Say what would change, change nothing
    #[arg(short = 'n', long)]
    pub dry_run: bool,
}

#[derive(Args, Debug)]
pub struct CatArgs {
    /// What to print
    #[arg(value_enum)]
    pub what: CatWhat,
    /// Its id (or a unique prefix; a snapshot may be `latest`); not for config
    pub id: Option<String>,
}

/// `coffer cat WHAT`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum CatWhat {
    /// The config's settings
    Config,
    /// A snapshot
    Snapshot,
    /// A tree (a folder listing)
    Tree,
    /// An index object
    Index,
    /// A pack's header: its blobs, offsets and lengths
    Pack,
    /// A chunk's plaintext, raw, on standard output
    Blob,
}

#[derive(Args, Debug)]
pub struct CompletionsArgs {
    /// The shell to complete for
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Args, Debug)]
pub struct ManArgs {
    /// Write coffer.1 and one page per command (coffer-backup.1, …) into this folder, instead of
    /// printing coffer.1
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum RepairCommand {
    /// Rebuild the index from the headers of every stored pack
    #[command(after_help = "Examples:\n  coffer repair index --dry-run\n  coffer repair index")]
    Index(RepairIndexArgs),
    /// Copy what still authenticates out of damaged packs, then delete them
    #[command(
        after_help = "Examples:\n  coffer check --read-data          # names the damaged packs\n  coffer repair packs --dry-run\n  coffer repair packs"
    )]
    Packs(RepairPacksArgs),
    /// Write repaired copies of snapshots whose files lost data (removing those files)
    #[command(after_help = "Examples:\n  coffer repair snapshots --dry-run\n  coffer repair snapshots --forget")]
    Snapshots(RepairSnapshotsArgs),
}

#[derive(Args, Debug)]
pub struct RepairIndexArgs {
    /// Read the packs' headers and say what the new index would hold; write and delete nothing
    #[arg(short = 'n', long)]
    pub dry_run: bool,
}

#[derive(Args, Debug)]
pub struct RepairPacksArgs {
    /// Packs to repair (id or unique prefix); none: download every pack to find the damaged ones
    #[arg(value_name = "PACK")]
    pub packs: Vec<String>,
    /// Say what would be salvaged and lost; write and delete nothing
    #[arg(short = 'n', long)]
    pub dry_run: bool,
}

#[derive(Args, Debug)]
pub struct RepairSnapshotsArgs {
    /// Snapshots to repair (id, unique prefix, or `latest`); all when none is given
    #[arg(value_name = "SNAPSHOT")]
    pub snapshots: Vec<String>,
    /// Name every path that lost data; write nothing
    #[arg(short = 'n', long)]
    pub dry_run: bool,
    /// Remove each original snapshot once its repaired copy is written
    #[arg(long)]
    pub forget: bool,
}

/// Exclude patterns, which backup and rewrite read alike.
#[derive(Args, Debug)]
pub struct PatternArgs {
    /// Exclude entries matching a pattern (repeatable)
    #[arg(short = 'e', long = "exclude", value_name = "PATTERN")]
    pub excludes: Vec<String>,
    /// Read exclude patterns from a file, one per line (repeatable)
    #[arg(long = "exclude-file", value_name = "FILE")]
    pub exclude_files: Vec<PathBuf>,
    /// Like --exclude, ignoring case (repeatable)
    #[arg(long = "iexclude", value_name = "PATTERN")]
    pub iexcludes: Vec<String>,
}

impl PatternArgs {
    /// The patterns given, those of every `--exclude-file` included.
    pub fn excludes(&self) -> anyhow::Result<coffer_core::exclude::Excludes> {
        use coffer_core::exclude::Excludes;
        let mut patterns = self.excludes.clone();
        for f in &self.exclude_files {
            patterns.extend(Excludes::read_file(f)?);
        }
        Ok(Excludes::new(&patterns)?.case_insensitive(&self.iexcludes)?)
    }
}

#[derive(Args, Debug)]
pub struct RewriteArgs {
    /// Snapshots to rewrite (id, unique prefix, or `latest`); all when none is given
    #[arg(value_name = "SNAPSHOT")]
    pub snapshots: Vec<String>,
    /// Which paths to remove: the patterns of `backup --exclude`
    #[command(flatten)]
    pub patterns: PatternArgs,
    /// Remove each original snapshot once its rewritten copy is written (then `prune` frees the space)
    #[arg(long)]
    pub forget: bool,
    /// Say what would be removed; write nothing
    #[arg(short = 'n', long)]
    pub dry_run: bool,
}

#[derive(Args, Debug)]
pub struct PruneArgs {
    /// Only say which packs would be deleted and repacked, and what that would download and upload
    #[arg(short = 'n', long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub repack: RepackArgs,
}

/// How prune treats packs that are partly unused.
#[derive(Args, Debug)]
pub struct RepackArgs {
    /// Repack packs whose unused share exceeds PERCENT (default 10; 100 never repacks)
    #[arg(long, value_name = "PERCENT", default_value = "10", value_parser = percent)]
    pub max_unused: f64,
    /// Repack at most SIZE of packs in this run (e.g. 2G); the rest waits for the next prune
    #[arg(long, value_name = "SIZE", value_parser = size)]
    pub max_repack: Option<u64>,
    /// Repack packs in an archive storage class (GLACIER, DEEP_ARCHIVE) too: prune asks the store to restore
    /// them (bulk retrieval, billed) and repacks those whose copies are ready; run it again once the others are
    #[arg(long)]
    pub repack_cold: bool,
}

impl RepackArgs {
    pub fn options(&self, dry_run: bool) -> coffer_core::prune::PruneOptions {
        coffer_core::prune::PruneOptions {
            dry_run,
            max_unused_percent: self.max_unused,
            max_repack_bytes: self.max_repack,
            repack_cold: self.repack_cold,
            ..Default::default()
        }
    }
}

fn percent(text: &str) -> Result<f64, String> {
    let t = text.trim().trim_end_matches('%');
    match t.parse::<f64>() {
        Ok(p) if (0.0..=100.0).contains(&p) => Ok(p),
        _ => Err(format!("{text:?} is not a percentage from 0 to 100")),
    }
}

fn size(text: &str) -> Result<u64, String> {
    coffer_core::exclude::parse_size(text).map_err(|e| e.to_string())
}

#[derive(Args, Debug)]
pub struct UnlockArgs {
    /// Also watch the locks of other machines for the stale time (30 min) and remove those that were
    /// not refreshed meanwhile
    #[arg(long)]
    pub wait: bool,
    /// Remove every lock, even those in use or unreadable: only when you know that no other coffer
    /// is running on this repository
    #[arg(long)]
    pub remove_all: bool,
}

/// Parses `90`, `90s`, `15m`, `2h`, `1h30m`, `500ms`.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let bad = || format!("{s:?} is not a duration: expected e.g. 30s, 10m, 1h30m");
    let mut total = std::time::Duration::ZERO;
    let mut rest = s.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        if digits == 0 {
            return Err(bad());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "" | "s" => std::time::Duration::from_secs(n),
            "ms" => std::time::Duration::from_millis(n),
            "m" => std::time::Duration::from_secs(n.saturating_mul(60)),
            "h" => std::time::Duration::from_secs(n.saturating_mul(3600)),
            _ => return Err(bad()),
        };
        total = total.saturating_add(unit);
        rest = &rest[unit_len..];
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::parse_duration;
    use std::time::Duration;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("15m").unwrap(), Duration::from_secs(900));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        for bad in ["", "m", "5x", "1.5h", "-3s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    /// The words of an example line, as a shell would split it: up to a
    /// comment, a pipe, a redirection or `&&`, with quotes removed.
    fn example_words(line: &str) -> Vec<String> {
        let line = line.split("  #").next().unwrap_or_default();
        let mut words = Vec::new();
        for word in line.split_whitespace() {
            if matches!(word, "|" | ">" | "&&") {
                break;
            }
            words.push(word.trim_matches('\'').to_string());
        }
        words
    }

    /// Every command and subcommand has examples in its --help, and every
    /// example parses with the very definitions it documents.
    #[test]
    fn every_command_has_examples_that_parse() {
        use clap::{CommandFactory, Parser};
        fn visit(cmd: &clap::Command, path: &str, checked: &mut usize) {
            for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
                let name = format!("{path} {}", sub.get_name());
                if sub.has_subcommands() {
                    visit(sub, &name, checked);
                    continue;
                }
                let help = sub.get_after_help().map(|h| h.to_string()).unwrap_or_default();
                assert!(help.starts_with("Examples:"), "{name} has no examples in its --help");
                for line in help.lines().skip(1) {
                    let words = example_words(line);
                    assert_eq!(words.first().map(String::as_str), Some("coffer"), "{name}: {line:?}");
                    if let Err(e) = super::Cli::try_parse_from(&words) {
                        panic!("{name}: the example {line:?} does not parse: {e}");
                    }
                    *checked += 1;
                }
            }
        }
        let mut checked = 0;
        visit(&super::Cli::command(), "coffer", &mut checked);
        assert!(checked > 40, "only {checked} examples");
    }
}

#[derive(Args, Debug)]
pub struct InitArgs {
    /// argon2id memory in KiB for the first key (default 65536)
    #[arg(long, hide = true, value_name = "KIB")]
    pub argon2_memory: Option<u32>,
    /// argon2id passes for the first key (default 3)
    #[arg(long, hide = true, value_name = "N")]
    pub argon2_iterations: Option<u32>,
    /// Average chunk size in bytes (min is half, max 8 times; default 1 MiB)
    #[arg(long, hide = true, value_name = "BYTES")]
    pub chunk_size: Option<u32>,
    /// Target size of data packs, 4M to 512M (default 32M). Larger packs
    /// mean fewer objects (cheaper cold storage, fewer requests); a pack is
    /// the unit that prune repacks and check downloads.
    #[arg(long, value_name = "SIZE")]
    pub pack_size: Option<String>,
    /// Target size of tree packs, 4M to 512M (default 4M)
    #[arg(long, hide = true, value_name = "SIZE")]
    pub tree_pack_size: Option<String>,
    /// Create the S3 bucket if it does not exist (with Object Lock enabled, given --object-lock)
    #[arg(long)]
    pub create_bucket: bool,
    /// S3 Object Lock: write every object (but locks) retained for DAYS days, so that no key, not even a
    /// stolen one that may delete, can remove or overwrite a backup before then; each backup extends what
    /// its snapshot uses. The bucket must have Object Lock enabled. See docs/s3.md, "Object Lock"
    #[arg(long, value_name = "DAYS", value_parser = clap::value_parser!(u32).range(1..=36500))]
    pub object_lock: Option<u32>,
    /// With --object-lock: governance (credentials with s3:BypassGovernanceRetention can still shorten it)
    /// or compliance (nobody can, the account's root included, until it ends)
    #[arg(long, value_enum, default_value_t = LockModeArg::Governance, requires = "object_lock", value_name = "MODE")]
    pub object_lock_mode: LockModeArg,
}

/// `init --object-lock-mode`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockModeArg {
    Governance,
    Compliance,
}

#[derive(Args, Debug)]
pub struct BackupArgs {
    /// Files and directories to back up
    #[arg(value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    /// Add a tag to the snapshot (repeatable, or comma-separated)
    #[arg(long = "tag", value_delimiter = ',', value_name = "TAG")]
    pub tags: Vec<String>,
    /// Host name to record instead of this machine's
    #[arg(long, value_name = "NAME")]
    pub host: Option<String>,
    #[command(flatten)]
    pub patterns: PatternArgs,
    /// Leave out directories that hold a CACHEDIR.TAG (bford.info/cachedir)
    #[arg(long)]
    pub exclude_caches: bool,
    /// Leave out directories that contain a file of this name; with
    /// NAME:HEADER, only if the file starts with HEADER (repeatable)
    #[arg(long = "exclude-if-present", value_name = "NAME[:HEADER]")]
    pub exclude_if_present: Vec<String>,
    /// Leave out files larger than SIZE (e.g. 500M, 2G)
    #[arg(long, value_name = "SIZE")]
    pub exclude_larger_than: Option<String>,
    /// Read paths to back up from a file, one per line (`#` starts a comment; repeatable)
    #[arg(long = "files-from", value_name = "FILE")]
    pub files_from: Vec<PathBuf>,
    /// Stay on the file system of each path named (mount points are kept, empty)
    #[arg(short = 'x', long)]
    pub one_file_system: bool,
    /// Do not use inode numbers to detect changes (for network, FUSE and removable file systems)
    #[arg(long)]
    pub ignore_inode: bool,
    /// Do not use ctime to detect changes (for file systems where it churns)
    #[arg(long)]
    pub ignore_ctime: bool,
    /// Compare with this snapshot instead of the latest of the same host and paths
    #[arg(long, value_name = "SNAPSHOT")]
    pub parent: Option<String>,
    /// Read every file, even those unchanged since the parent snapshot
    #[arg(long)]
    pub force: bool,
    /// Do everything but write to the repository
    #[arg(short = 'n', long)]
    pub dry_run: bool,
    /// Record this time instead of now: `YYYY-MM-DD HH:MM:SS` (local time) or RFC 3339; not in the future
    #[arg(long, value_name = "TIME")]
    pub time: Option<String>,
    /// Back up standard input, read to its end, as one file at the snapshot's root (no paths)
    #[arg(long)]
    pub stdin: bool,
    /// Name of the file that --stdin or --stdin-from-command stores, at the snapshot's root [default: stdin]
    #[arg(long, value_name = "NAME")]
    pub stdin_filename: Option<String>,
    /// Back up the standard output of the COMMAND given after `--` (run without a shell) as one file;
    /// if it exits non-zero, no snapshot is written
    #[arg(long)]
    pub stdin_from_command: bool,
    /// The command of --stdin-from-command and its arguments (without that option, paths after `--`)
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<std::ffi::OsString>,
}

#[derive(Args, Debug)]
pub struct SnapshotsArgs {
    /// Only snapshots of this host (repeatable: any of them)
    #[arg(long = "host", value_name = "NAME")]
    pub hosts: Vec<String>,
    /// Only snapshots with all of these comma-separated tags; repeat the
    /// option to accept any of several such groups ('' means untagged)
    #[arg(long = "tag", value_name = "TAG[,TAG...]")]
    pub tags: Vec<String>,
    /// Only snapshots that include this path (repeatable: all of them)
    #[arg(long = "path", value_name = "PATH")]
    pub paths: Vec<String>,
}

#[derive(Args, Debug)]
pub struct LsArgs {
    /// Snapshot id (or a unique prefix), or `latest`
    pub snapshot: String,
    /// Only list below this path in the snapshot
    pub path: Option<PathBuf>,
    /// Show permissions, owner, size and modification time
    #[arg(short, long)]
    pub long: bool,
}

#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// Snapshot id (or a unique prefix), or `latest`
    pub snapshot: String,
    /// Folder to restore into (created if missing)
    #[arg(short, long, value_name = "DIR")]
    pub target: PathBuf,
    /// Restore only this path of the snapshot and what is below it (repeatable)
    #[arg(short, long = "include", value_name = "PATH")]
    pub includes: Vec<PathBuf>,
    /// What to do with files already in the target: always rewrite them; if-changed: keep those whose
    /// size, mtime and content (re-hashed) already match the snapshot; never: keep whatever is there
    #[arg(long, value_enum, default_value_t = OverwriteArg::Always, value_name = "WHEN")]
    pub overwrite: OverwriteArg,
    /// Read every restored file back and compare it with the snapshot; exit 1 on any difference
    #[arg(long)]
    pub verify: bool,
    /// Then delete what the target holds that the snapshot does not (within the included paths, if any), so
    /// that the target mirrors the snapshot
    #[arg(long)]
    pub delete: bool,
    /// Restore nothing: list the packs the restore would read, their bytes, which are archived, and what
    /// retrieving those costs per tier
    #[arg(short = 'n', long, conflicts_with = "warm_up")]
    pub dry_run: bool,
    /// Ask the store to restore the archived packs this restore needs (bulk, standard or expedited; default
    /// bulk, the cheapest), wait until they are readable, then restore. What was asked for is remembered, so
    /// a run that is stopped (or uses --no-wait) resumes where it left off
    #[arg(long, value_name = "TIER", num_args = 0..=1, require_equals = true, default_missing_value = "bulk",
          value_parser = tier)]
    pub warm_up: Option<coffer_core::backend::RetrievalTier>,
    /// With --warm-up: keep the restored copies this many days (billed as STANDARD storage)
    #[arg(long, value_name = "DAYS", default_value_t = 7, requires = "warm_up")]
    pub warm_up_days: u32,
    /// With --warm-up: exit (code 4) instead of waiting while packs are still being restored; run the same
    /// command again later to go on
    #[arg(long, requires = "warm_up")]
    pub no_wait: bool,
    /// With --dry-run: a TOML file of prices that replace the built-in table's (as `stats --cost --prices`)
    #[arg(long, value_name = "FILE", env = "COFFER_PRICES")]
    pub prices: Option<PathBuf>,
    /// With --warm-up: how often to ask the store whether the packs are ready
    #[arg(long, value_name = "SECONDS", default_value_t = 600, env = "COFFER_WARM_UP_POLL")]
    pub warm_up_poll: u64,
}

fn tier(text: &str) -> Result<coffer_core::backend::RetrievalTier, String> {
    coffer_core::backend::RetrievalTier::parse(text)
        .ok_or_else(|| format!("{text:?} is not a retrieval tier: bulk, standard or expedited"))
}

/// `restore --overwrite`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum OverwriteArg {
    Always,
    IfChanged,
    Never,
}

#[derive(Args, Debug)]
pub struct DumpArgs {
    /// Snapshot id (or a unique prefix), or `latest`
    pub snapshot: String,
    /// Path in the snapshot: a file, a folder, or `/` for the whole snapshot
    pub path: PathBuf,
    /// Write to this file instead of standard output
    #[arg(short, long, value_name = "FILE")]
    pub target: Option<PathBuf>,
}

fn keep_count(s: &str) -> Result<u32, String> {
    coffer_core::policy::parse_count(s).map_err(|e| e.to_string())
}

fn keep_duration(s: &str) -> Result<coffer_core::policy::Duration, String> {
    s.parse().map_err(|e: coffer_core::Error| e.to_string())
}

#[derive(Args, Debug)]
pub struct ForgetArgs {
    /// Snapshots to remove (id, unique id prefix, or `latest`); not combined with --keep-*
    #[arg(value_name = "SNAPSHOT")]
    pub snapshots: Vec<String>,
    /// Keep the N newest snapshots (`unlimited`: all)
    #[arg(short = 'l', long, value_name = "N", default_value = "0", value_parser = keep_count)]
    pub keep_last: u32,
    /// Keep the newest snapshot of each of the last N hours that have one
    #[arg(short = 'H', long, value_name = "N", default_value = "0", value_parser = keep_count)]
    pub keep_hourly: u32,
    /// Keep the newest snapshot of each of the last N days that have one
    #[arg(short = 'd', long, value_name = "N", default_value = "0", value_parser = keep_count)]
    pub keep_daily: u32,
    /// Keep the newest snapshot of each of the last N weeks (Monday to Sunday) that have one
    #[arg(short = 'w', long, value_name = "N", default_value = "0", value_parser = keep_count)]
    pub keep_weekly: u32,
    /// Keep the newest snapshot of each of the last N months that have one
    #[arg(short = 'm', long, value_name = "N", default_value = "0", value_parser = keep_count)]
    pub keep_monthly: u32,
    /// Keep the newest snapshot of each of the last N years that have one
    #[arg(short = 'y', long, value_name = "N", default_value = "0", value_parser = keep_count)]
    pub keep_yearly: u32,
    /// Keep snapshots newer than DURATION (e.g. 1y2m3d4h) before the newest snapshot
    #[arg(long, value_name = "DURATION", value_parser = keep_duration)]
    pub keep_within: Option<coffer_core::policy::Duration>,
    /// Keep the newest snapshot of each hour among those newer than DURATION before the newest snapshot
    #[arg(long, value_name = "DURATION", value_parser = keep_duration)]
    pub keep_within_hourly: Option<coffer_core::policy::Duration>,
    /// Keep the newest snapshot of each day among those newer than DURATION before the newest snapshot
    #[arg(long, value_name = "DURATION", value_parser = keep_duration)]
    pub keep_within_daily: Option<coffer_core::policy::Duration>,
    /// Keep the newest snapshot of each week among those newer than DURATION before the newest snapshot
    #[arg(long, value_name = "DURATION", value_parser = keep_duration)]
    pub keep_within_weekly: Option<coffer_core::policy::Duration>,
    /// Keep the newest snapshot of each month among those newer than DURATION before the newest snapshot
    #[arg(long, value_name = "DURATION", value_parser = keep_duration)]
    pub keep_within_monthly: Option<coffer_core::policy::Duration>,
    /// Keep the newest snapshot of each year among those newer than DURATION before the newest snapshot
    #[arg(long, value_name = "DURATION", value_parser = keep_duration)]
    pub keep_within_yearly: Option<coffer_core::policy::Duration>,
    /// Keep snapshots with all of these comma-separated tags (repeatable; '' keeps untagged ones)
    #[arg(long = "keep-tag", value_name = "TAG[,TAG...]")]
    pub keep_tags: Vec<String>,
    /// Only consider snapshots of this host (repeatable)
    #[arg(long = "host", value_name = "NAME")]
    pub hosts: Vec<String>,
    /// Only consider snapshots with all of these comma-separated tags (repeatable: any of the lists)
    #[arg(long = "tag", value_name = "TAG[,TAG...]")]
    pub tags: Vec<String>,
    /// Only consider snapshots that include this path (repeatable: all of them)
    #[arg(long = "path", value_name = "PATH")]
    pub paths: Vec<String>,
    /// Apply the policy separately to each group of snapshots sharing these fields: host, paths, tags, or '' for one group
    #[arg(short = 'g', long, value_name = "FIELDS", default_value = "host,paths")]
    pub group_by: String,
    /// Show what would be removed and why the rest is kept, remove nothing
    #[arg(short = 'n', long)]
    pub dry_run: bool,
    /// Then delete the data no remaining snapshot references (as `coffer prune`)
    #[arg(long)]
    pub prune: bool,
    #[command(flatten)]
    pub repack: RepackArgs,
}

#[derive(Subcommand, Debug)]
pub enum KeyCommand {
    /// Add a key: a new password for the same repository
    #[command(
        after_help = "Examples:\n  coffer key add\n  coffer key add --new-password-file ~/.config/coffer/second-password"
    )]
    Add(NewKeyArgs),
    /// List the keys; `*` marks the one the password given opens
    #[command(after_help = "Examples:\n  coffer key list\n  coffer key list --json")]
    List,
    /// Remove a key (not the one in use, and never the last)
    #[command(after_help = "Examples:\n  coffer key list\n  coffer key remove 5c1e0a9b")]
    Remove {
        /// Key id, or a unique prefix of it
        #[arg(value_name = "ID")]
        id: String,
    },
    /// Change the password: add a key for the new password, then remove the one in use
    #[command(after_help = "Examples:\n  coffer key passwd")]
    Passwd(NewKeyArgs),
}

#[derive(Args, Debug)]
pub struct NewKeyArgs {
    /// Read the new password from the first line of this file (default: ask on the terminal)
    #[arg(long, value_name = "FILE")]
    pub new_password_file: Option<PathBuf>,
    /// argon2id memory in KiB for the new key (default 65536)
    #[arg(long, hide = true, value_name = "KIB")]
    pub argon2_memory: Option<u32>,
    /// argon2id passes for the new key (default 3)
    #[arg(long, hide = true, value_name = "N")]
    pub argon2_iterations: Option<u32>,
}

#[derive(Args, Debug)]
pub struct StatsArgs {
    /// Snapshots to count (id, unique prefix, or `latest`); all when none is given
    #[arg(value_name = "SNAPSHOT")]
    pub snapshots: Vec<String>,
    /// Estimate the monthly bill and the cost of reading everything back, per storage class, from the
    /// repository's objects as the store lists them (AWS us-east-1 list prices unless --prices says others)
    #[arg(long)]
    pub cost: bool,
    /// With --cost: a TOML file of prices that replace the built-in table's (see docs/s3.md, "What it costs")
    #[arg(long, value_name = "FILE", env = "COFFER_PRICES")]
    pub prices: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct DiffArgs {
    /// The older snapshot (id, unique prefix, or `latest`)
    pub first: String,
    /// The newer snapshot
    pub second: String,
    /// Also show entries whose metadata alone changed (U)
    #[arg(long)]
    pub metadata: bool,
}

#[derive(Args, Debug)]
pub struct CheckArgs {
    /// Also download every pack, check that it hashes to its name, and authenticate every blob in it
    #[arg(long, conflicts_with = "read_data_subset")]
    pub read_data: bool,
    /// Download only a subset of packs: N/M (packs whose id's first byte modulo M is N-1) or P% (a random share)
    #[arg(long, value_name = "N/M|P%", value_parser = read_subset)]
    pub read_data_subset: Option<coffer_core::check::ReadData>,
}

fn read_subset(s: &str) -> Result<coffer_core::check::ReadData, String> {
    s.parse().map_err(|e: coffer_core::Error| e.to_string())
}

#[cfg(all(feature = "mount", target_os = "linux"))]
#[derive(Args, Debug)]
pub struct MountArgs {
    /// An existing folder (normally empty) to show the snapshots in
    pub mountpoint: PathBuf,
    /// Let other users read the mount (needed to share it with Samba); the recorded modes and owners
    /// still apply. Not root: needs `user_allow_other` in /etc/fuse.conf
    #[arg(long)]
    pub allow_other: bool,
    /// Memory for decrypted chunks kept for repeated reads (e.g. 64M, 1G)
    #[arg(long, value_name = "SIZE", default_value = "128M")]
    pub cache_size: String,
    /// Do not lock the repository (as restic's `mount --no-lock`): nothing is written to it, so a
    /// read-only credential can browse, but a prune may then delete chunks of the files being read
    #[arg(long)]
    pub no_lock: bool,
    /// Read through the kernel's page cache instead of straight from coffer's chunk cache (the
    /// default on Linux before 6.6): one more copy of every byte, and memory as large as the files
    /// read, for programs that re-read the same bytes in small pieces
    #[arg(long)]
    pub page_cache: bool,
}
