//! A repository in an S3 bucket (AWS, or any S3-compatible store: Garage,
//! MinIO, Ceph, Backblaze B2, Wasabi).
//!
//! Objects live under `PREFIX/<key>` in the bucket. An S3 PUT is atomic (a
//! reader sees the whole object or none) and durable when it returns, so
//! [`Backend::sync`] has nothing to do, and there are no temporary names.
//!
//! Credentials come only from the standard AWS chain (environment variables,
//! `~/.aws/credentials` and `~/.aws/config` profiles, `AWS_PROFILE`, web
//! identity, container and instance roles): coffer never stores a cloud
//! secret of its own.
//!
//! The SDK client is built lazily, on the first request, inside the runtime
//! that runs the requests: its connection pool and timers belong to that
//! runtime, and building it needs no runtime of its own.

use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{BehaviorVersion, Region, RequestChecksumCalculation, ResponseChecksumValidation};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::{ByteStream, ByteStreamError};
use aws_sdk_s3::types::StorageClass;

use super::{
    Backend, BackendError, BackendResult, Bytes, Entry, LockMode, ObjectLock, RestoreStatus, Retention, RetrievalTier,
    StorageClasses, WireCounters, WireStats,
};

/// Requests in flight by default: enough that a link with 20-50 ms per
/// request still moves data at full speed. The bytes in flight are capped by
/// the pipelines, not by this number.
pub const DEFAULT_CONNECTIONS: usize = 32;

/// Attempts per request by default (the first try and five retries), with
/// exponential backoff and jitter between them.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 6;

/// How an archived object's class is named when the store does not say.
const ARCHIVE: &str = "an archive storage class";

/// Where and how to reach the bucket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct S3Config {
    pub bucket: String,
    /// Folder inside the bucket, without leading or trailing `/`; may be empty.
    pub prefix: String,
    /// `http(s)://host[:port]` of an S3-compatible store; `None` for AWS.
    pub endpoint: Option<String>,
    /// Region; `None` takes it from the usual AWS configuration.
    pub region: Option<String>,
    /// Path-style addressing (`host/bucket/key`): what most S3-compatible
    /// stores need. AWS uses virtual-host style (`bucket.host/key`).
    pub path_style: bool,
    /// Requests worth having in flight at once.
    pub connections: usize,
    /// Storage class for `data/` packs only: everything else must stay
    /// readable at once, and is small. `None` takes the class the
    /// repository records (see [`StorageClasses::use_recorded_data_class`]),
    /// or the bucket's default.
    pub storage_class: Option<String>,
    /// Attempts per request before giving up.
    pub max_attempts: u32,
    /// Base delay of the exponential backoff between attempts.
    pub initial_backoff: Duration,
    /// Create the bucket on first use if it does not exist (`init --create-bucket`).
    pub create_bucket: bool,
    /// Create it with Object Lock enabled (`init --create-bucket --object-lock`).
    pub create_with_object_lock: bool,
    /// Fixed credentials in place of the AWS chain: for tests and programs
    /// that embed the library. The command line never sets them, so a
    /// secret is never typed on a command line or stored by coffer.
    pub credentials: Option<StaticCredentials>,
}

/// An access key and its secret.
#[derive(Clone, PartialEq, Eq)]
pub struct StaticCredentials {
    pub access_key_id: String,
    pub secret_access_key: String,
}

impl std::fmt::Debug for StaticCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StaticCredentials").field("access_key_id", &self.access_key_id).finish_non_exhaustive()
    }
}

impl S3Config {
    /// The defaults for a bucket: AWS, region from the environment.
    pub fn new(bucket: impl Into<String>, prefix: impl Into<String>) -> S3Config {
        S3Config {
            bucket: bucket.into(),
            prefix: prefix.into().trim_matches('/').to_string(),
            endpoint: None,
            region: None,
            path_style: false,
            connections: DEFAULT_CONNECTIONS,
            storage_class: None,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            initial_backoff: Duration::from_millis(500),
            create_bucket: false,
            create_with_object_lock: false,
            credentials: None,
        }
    }

    /// Checks what can be checked without a request, so that a typo is
    /// reported before anything is read or written.
    pub fn validate(&self) -> BackendResult<()> {
        let bad = |message: String| BackendError::Unavailable { location: self.location(), message };
        if !valid_bucket_name(&self.bucket) {
            return Err(bad(format!(
                "{:?} is not a valid bucket name (3-63 characters: lowercase letters, digits, '.', '-', '_')",
                self.bucket
            )));
        }
        if self.connections == 0 {
            return Err(bad("the number of S3 connections must be at least 1".into()));
        }
        if self.max_attempts == 0 {
            return Err(bad("the number of S3 attempts must be at least 1".into()));
        }
        if let Some(endpoint) = &self.endpoint
            && !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
        {
            return Err(bad(format!("the endpoint {endpoint:?} must start with http:// or https://")));
        }
        if let Some(class) = &self.storage_class
            && !super::valid_storage_class(class)
        {
            return Err(bad(format!("{class:?} is not a storage class")));
        }
        Ok(())
    }

    /// `s3:BUCKET/PREFIX` or `s3:http://HOST:PORT/BUCKET/PREFIX`, as typed.
    pub fn location(&self) -> String {
        let mut out = String::from("s3:");
        if let Some(endpoint) = &self.endpoint {
            out.push_str(endpoint.trim_end_matches('/'));
            out.push('/');
        }
        out.push_str(&self.bucket);
        if !self.prefix.is_empty() {
            out.push('/');
            out.push_str(&self.prefix);
        }
        out
    }
}

/// S3's bucket naming rules, loosely (S3-compatible stores accept a few
/// more, such as `_`): enough to catch a path typed in place of a bucket.
fn valid_bucket_name(name: &str) -> bool {
    (3..=63).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_'))
        && name.as_bytes()[0].is_ascii_alphanumeric()
}

pub struct S3Backend {
    config: S3Config,
    client: tokio::sync::OnceCell<Client>,
    wire: WireCounters,
    /// Whether data pack uploads still send `If-None-Match: *` (see [`S3Backend::put`]).
    conditional: std::sync::atomic::AtomicBool,
    /// The class the repository records for data packs, used when the
    /// config names none.
    recorded_class: std::sync::OnceLock<String>,
    /// The repository's Object Lock, once known: every upload but locks
    /// carries a retention.
    object_lock: std::sync::OnceLock<ObjectLock>,
}

impl S3Backend {
    /// A GET of the whole object, or of `(offset, len)` of it.
    async fn get_object(&self, key: &str, range: Option<(u64, u64)>, max_len: u64) -> BackendResult<Vec<u8>> {
        let client = self.client().await?;
        let full = self.full_key(key);
        // The SDK retries the request, but not a connection dropped while the
        // body streams in: that is retried here.
        let mut attempt = 1;
        loop {
            self.wire.get();
            let mut request = client.get_object().bucket(&self.config.bucket).key(&full);
            if let Some((offset, len)) = range {
                request = request.range(format!("bytes={offset}-{}", offset + len - 1));
            }
            let resp = match request.send().await {
                Ok(resp) => resp,
                Err(e) => {
                    // 416: the range starts at or past the object's end.
                    if let (Some((offset, len)), Some(416)) = (range, status(&e)) {
                        return Err(super::short_range(key, offset, len, 0));
                    }
                    if code(&e) == Some("InvalidObjectState") {
                        // An archived object without a restored copy (S3 says 403).
                        let class = match e.as_service_error() {
                            Some(s) if s.is_invalid_object_state() => {
                                self.class_of_invalid_state(s).unwrap_or_else(|| ARCHIVE.into())
                            }
                            _ => ARCHIVE.into(),
                        };
                        return Err(BackendError::Archived { key: key.to_string(), class });
                    }
                    let not_found = e.as_service_error().is_some_and(|s| s.is_no_such_key())
                        || (status(&e) == Some(404) && code(&e) != Some("NoSuchBucket"));
                    if not_found {
                        return Err(BackendError::NotFound { key: key.to_string() });
                    }
                    return Err(self.error("GET", key, e));
                }
            };
            let announced = resp.content_length().and_then(|n| u64::try_from(n).ok());
            if let Some(size) = announced.filter(|&n| n > max_len) {
                // Dropping the response closes the connection unread.
                return Err(BackendError::TooLarge { key: key.to_string(), size, limit: max_len });
            }
            let expected = announced.and_then(|n| usize::try_from(n).ok()).unwrap_or(0);
            match read_body(resp.body, expected, max_len).await {
                Ok(data) => {
                    self.wire.received(data.len() as u64);
                    return Ok(data);
                }
                Err(BodyError::TooLarge(size)) => {
                    return Err(BackendError::TooLarge { key: key.to_string(), size, limit: max_len });
                }
                Err(BodyError::Stream(e)) if attempt < self.config.max_attempts => {
                    tracing::debug!("GET {key}: body interrupted ({e}); retrying");
                    tokio::time::sleep(self.config.initial_backoff * attempt).await;
                    attempt += 1;
                }
                Err(BodyError::Stream(e)) => {
                    return Err(self.unavailable(format!(
                        "GET {key}: the connection broke while reading the object, {attempt} times: {e}"
                    )));
                }
            }
        }
    }

    /// A backend for the bucket; nothing is contacted until the first request.
    pub fn new(config: S3Config) -> BackendResult<S3Backend> {
        config.validate()?;
        Ok(S3Backend {
            config,
            client: tokio::sync::OnceCell::new(),
            wire: WireCounters::default(),
            conditional: std::sync::atomic::AtomicBool::new(true),
            recorded_class: std::sync::OnceLock::new(),
            object_lock: std::sync::OnceLock::new(),
        })
    }

    pub fn config(&self) -> &S3Config {
        &self.config
    }

    /// The storage class an `InvalidObjectState` answer names.
    fn class_of_invalid_state(&self, e: &aws_sdk_s3::operation::get_object::GetObjectError) -> Option<String> {
        match e {
            aws_sdk_s3::operation::get_object::GetObjectError::InvalidObjectState(s) => {
                s.storage_class().map(|c| c.as_str().to_string())
            }
            _ => None,
        }
    }

    /// The class data packs are written in: this backend's own, or the
    /// one the repository records.
    fn data_pack_class(&self) -> Option<&str> {
        self.config.storage_class.as_deref().or_else(|| self.recorded_class.get().map(String::as_str))
    }

    /// The object key in the bucket.
    fn full_key(&self, key: &str) -> String {
        if self.config.prefix.is_empty() { key.to_string() } else { format!("{}/{key}", self.config.prefix) }
    }

    async fn client(&self) -> BackendResult<&Client> {
        self.client.get_or_try_init(|| self.connect()).await
    }

    /// Builds the client, and checks the bucket: a missing bucket, wrong
    /// credentials or an unreachable endpoint are reported once, clearly,
    /// before the first object is read or written.
    async fn connect(&self) -> BackendResult<Client> {
        let c = &self.config;
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let mut loader = aws_config::defaults(BehaviorVersion::latest()).http_client(http);
        if let Some(region) = &c.region {
            loader = loader.region(Region::new(region.clone()));
        }
        if let Some(creds) = &c.credentials {
            loader = loader.credentials_provider(aws_sdk_s3::config::Credentials::new(
                creds.access_key_id.clone(),
                creds.secret_access_key.clone(),
                None,
                None,
                "coffer-static",
            ));
        }
        let shared = loader.load().await;
        let mut b = aws_sdk_s3::config::Builder::from(&shared)
            .retry_config(
                RetryConfig::standard()
                    .with_max_attempts(c.max_attempts)
                    .with_initial_backoff(c.initial_backoff)
                    .with_max_backoff(Duration::from_secs(20)),
            )
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(10))
                    .read_timeout(Duration::from_secs(120))
                    .operation_attempt_timeout(Duration::from_secs(300))
                    .build(),
            )
            .force_path_style(c.path_style)
            // Checksums only where the API requires them: every object is
            // authenticated by its AEAD tag when it is read, and TLS protects
            // it on the way, so a CRC over every body (computed for each
            // upload, checked on each download) would only cost CPU. Several
            // S3-compatible stores also reject the SDK's default streaming
            // checksums (aws-chunked bodies with trailers).
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
        if let Some(endpoint) = &c.endpoint {
            b = b.endpoint_url(endpoint.trim_end_matches('/'));
            if shared.region().is_none() {
                // Most S3-compatible stores ignore the region; SigV4 still needs one.
                b = b.region(Region::new("us-east-1"));
            }
        } else if shared.region().is_none() {
            return Err(self.unavailable(
                "no AWS region is configured: set AWS_REGION, a region in ~/.aws/config, or --s3-region".into(),
            ));
        }
        let client = Client::from_conf(b.build());
        self.check_bucket(&client).await?;
        Ok(client)
    }

    async fn check_bucket(&self, client: &Client) -> BackendResult<()> {
        let bucket = &self.config.bucket;
        self.wire.head();
        match client.head_bucket().bucket(bucket).send().await {
            Ok(_) => Ok(()),
            Err(e) if status(&e) == Some(404) || e.as_service_error().is_some_and(|s| s.is_not_found()) => {
                if self.config.create_bucket {
                    self.create_bucket(client).await
                } else {
                    Err(self.unavailable(format!(
                        "bucket {bucket} does not exist (create it, or run `coffer init --create-bucket`)"
                    )))
                }
            }
            Err(e) => Err(self.error("HEAD bucket", bucket, e)),
        }
    }

    async fn create_bucket(&self, client: &Client) -> BackendResult<()> {
        use aws_sdk_s3::types::{BucketLocationConstraint, CreateBucketConfiguration};
        let bucket = &self.config.bucket;
        let mut req = client.create_bucket().bucket(bucket);
        if self.config.create_with_object_lock {
            req = req.object_lock_enabled_for_bucket(true);
        }
        // AWS wants the region named, except for us-east-1 where naming it is an error.
        if self.config.endpoint.is_none()
            && let Some(region) = client.config().region().map(|r| r.as_ref().to_string())
            && region != "us-east-1"
        {
            req = req.create_bucket_configuration(
                CreateBucketConfiguration::builder()
                    .location_constraint(BucketLocationConstraint::from(region.as_str()))
                    .build(),
            );
        }
        self.wire.put(0);
        match req.send().await {
            Ok(_) => {
                tracing::info!("created bucket {bucket}");
                Ok(())
            }
            Err(e) if matches!(code(&e), Some("BucketAlreadyOwnedByYou")) => Ok(()),
            Err(e) => Err(self.error("create bucket", bucket, e)),
        }
    }

    fn unavailable(&self, message: String) -> BackendError {
        BackendError::Unavailable { location: self.config.location(), message }
    }

    /// Turns an SDK error into a message that says what happened, naming the
    /// operation and the object key.
    fn error<E>(&self, op: &str, key: &str, err: SdkError<E, aws_smithy_runtime_api::http::Response>) -> BackendError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let what = format!("{op} {key}");
        let bucket = &self.config.bucket;
        let message = match &err {
            SdkError::DispatchFailure(d) => {
                let target = self.config.endpoint.as_deref().unwrap_or("AWS S3");
                if d.is_timeout() {
                    format!("{what}: timed out connecting to {target}")
                } else if d.is_io() {
                    format!("{what}: cannot connect to {target}: {}", DisplayErrorContext(&err))
                } else {
                    format!("{what}: request to {target} failed: {}", DisplayErrorContext(&err))
                }
            }
            SdkError::TimeoutError(_) => format!("{what}: timed out after {} attempts", self.config.max_attempts),
            _ => {
                let code = code(&err).unwrap_or("");
                let status = status(&err);
                let detail = err.meta().message().map(|m| format!(" ({m})")).unwrap_or_default();
                match (code, status) {
                    ("NoSuchBucket", _) => format!("{what}: bucket {bucket} does not exist"),
                    ("SignatureDoesNotMatch", _) => {
                        format!("{what}: access denied: the signature does not match (wrong secret key?){detail}")
                    }
                    ("InvalidAccessKeyId", _) => {
                        format!("{what}: access denied: the access key id is not known to the store{detail}")
                    }
                    ("AccessDenied", _) | (_, Some(403)) if op == "DELETE" => format!(
                        "{what}: access denied: these credentials may not delete objects (backup-only \
                         credentials?). Backup, restore and the listing commands need no deletes; forget, \
                         prune, repair and key removal do: run them with credentials that may delete \
                         (see docs/s3.md, \"Backup-only (append-only) policy\"){detail}"
                    ),
                    ("AccessDenied", _) | (_, Some(403)) => format!(
                        "{what}: access denied / signature does not match: the credentials are wrong or \
                         not allowed this operation{detail}"
                    ),
                    ("PermanentRedirect" | "AuthorizationHeaderMalformed", _) | (_, Some(301)) => format!(
                        "{what}: bucket {bucket} is in another region than the one configured; set it \
                         with --s3-region or AWS_REGION{detail}"
                    ),
                    ("", Some(s)) => format!("{what}: the store answered HTTP {s}{detail}"),
                    (code, _) if !code.is_empty() => format!("{what}: {code}{detail}"),
                    _ => format!("{what}: {}", DisplayErrorContext(&err)),
                }
            }
        };
        self.unavailable(message)
    }
}

/// Folders whose objects are spread over 256 sub-folders named by the first
/// two hex digits of their id: `data/ab/ab12…`.
const SHARDED: [&str; 2] = ["data/", "tree/"];

/// Most keys one LIST page holds (S3's maximum and default).
const PAGE: usize = 1000;

/// The sub-folder (`ab`) of a key below a sharded folder, if it is one of
/// the 256 well-formed ones.
fn shard_of<'k>(key: &'k str, folder: &str) -> Option<&'k str> {
    let rest = key.strip_prefix(folder)?;
    let shard = rest.get(..2)?;
    let well_formed = shard.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    (well_formed && rest.as_bytes().get(2) == Some(&b'/')).then_some(shard)
}

impl S3Backend {
    /// Lists every key below `prefix`, page after page.
    async fn list_all(&self, prefix: &str) -> BackendResult<Vec<Entry>> {
        let client = self.client().await?;
        let mut pages =
            client.list_objects_v2().bucket(&self.config.bucket).prefix(self.full_key(prefix)).into_paginator().send();
        let mut out = Vec::new();
        while let Some(page) = pages.next().await {
            self.wire.list();
            let page = page.map_err(|e| self.error("LIST", prefix, e))?;
            self.collect(prefix, page.contents(), &mut out);
        }
        Ok(out)
    }

    /// Appends the objects of one page that are ours.
    fn collect(&self, prefix: &str, objects: &[aws_sdk_s3::types::Object], out: &mut Vec<Entry>) {
        let strip = if self.config.prefix.is_empty() { 0 } else { self.config.prefix.len() + 1 };
        for obj in objects {
            let Some(full) = obj.key() else { continue };
            // Only keys under our prefix are ours; a store that answered
            // with anything else is not trusted with it.
            let Some(key) = full.get(strip..).filter(|k| k.starts_with(prefix) && full.len() > strip) else {
                continue;
            };
            let size = obj.size().and_then(|s| u64::try_from(s).ok()).unwrap_or(0);
            let storage_class = obj.storage_class().map(|c| c.as_str().to_string());
            out.push(Entry { key: key.to_string(), size, storage_class });
        }
    }

    /// Lists `data/` or `tree/`. One LIST request answers for a small
    /// repository; when the first page is full, the sub-folders it did not
    /// reach are listed in parallel (one paginated listing each, as many at
    /// once as there are connections), since a single listing of a large
    /// repository is a long chain of round trips, 1,000 keys each. Only keys
    /// in the 256 well-formed sub-folders are returned.
    async fn list_sharded(&self, prefix: &str) -> BackendResult<Vec<Entry>> {
        use futures_util::StreamExt;

        let client = self.client().await?;
        self.wire.list();
        let first = client
            .list_objects_v2()
            .bucket(&self.config.bucket)
            .prefix(self.full_key(prefix))
            .max_keys(PAGE as i32)
            .send()
            .await
            .map_err(|e| self.error("LIST", prefix, e))?;
        let mut out = Vec::new();
        self.collect(prefix, first.contents(), &mut out);
        out.retain(|e| shard_of(&e.key, prefix).is_some());
        if first.is_truncated() != Some(true) {
            return Ok(out);
        }
        // Keys come in order, so the sub-folders before the last key's are
        // complete; that one is listed again from its start.
        let last = first.contents().last().and_then(|o| o.key()).unwrap_or("");
        let strip = if self.config.prefix.is_empty() { 0 } else { self.config.prefix.len() + 1 };
        let last = last.get(strip..).unwrap_or("");
        let resume = match shard_of(last, prefix) {
            Some(shard) => u8::from_str_radix(shard, 16).unwrap_or(0),
            None => 0,
        };
        out.retain(|e| shard_of(&e.key, prefix).and_then(|s| u8::from_str_radix(s, 16).ok()) < Some(resume));
        let shards: Vec<String> = (resume..=255).map(|i| format!("{prefix}{i:02x}/")).collect();
        type Listing<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = BackendResult<Vec<Entry>>> + Send + 'a>>;
        let mut futures: Vec<Listing<'_>> = Vec::with_capacity(shards.len());
        for shard in &shards {
            futures.push(Box::pin(self.list_all(shard)));
        }
        let mut listings = futures_util::stream::iter(futures).buffer_unordered(self.config.connections.max(1));
        while let Some(listing) = listings.next().await {
            out.extend(listing?);
        }
        Ok(out)
    }
}

/// Whether an answer to a conditional PUT says the store does not support
/// the condition, rather than that the upload failed.
fn unsupported_condition<E: ProvideErrorMetadata>(err: &SdkError<E, aws_smithy_runtime_api::http::Response>) -> bool {
    let message = err.meta().message().unwrap_or("").to_ascii_lowercase();
    matches!(code(err), Some("NotImplemented"))
        || status(err) == Some(501)
        || (status(err) == Some(400) && (message.contains("if-none-match") || message.contains("conditional")))
}

/// The most a GET body is pre-sized for from the length the store announces
/// (never more than the caller's limit): room for a whole pack of the
/// default 32 MiB, which `check --read-data` reads, with its header and
/// padding. Beyond it, the buffer grows as bytes actually arrive.
const MAX_PRESIZE: usize = 64 << 20;

/// Reads a GET body into one buffer, copying each piece once as it arrives
/// (collecting the pieces first and then joining them copied every byte
/// twice). The buffer is sized from the announced length up front.
///
/// Reading stops with [`BodyError::TooLarge`] once more than `max_len`
/// bytes have arrived, whatever length the store announced.
async fn read_body(mut body: ByteStream, expected: usize, max_len: u64) -> Result<Vec<u8>, BodyError> {
    let mut data = Vec::with_capacity(expected.min(MAX_PRESIZE));
    while let Some(piece) = body.try_next().await.map_err(BodyError::Stream)? {
        if (data.len() + piece.len()) as u64 > max_len {
            return Err(BodyError::TooLarge((data.len() + piece.len()) as u64));
        }
        data.extend_from_slice(&piece);
    }
    Ok(data)
}

/// Why a GET body could not be read.
enum BodyError {
    /// The connection broke: worth a retry.
    Stream(ByteStreamError),
    /// More bytes than the limit arrived (at least this many).
    TooLarge(u64),
}

fn status<E>(err: &SdkError<E, aws_smithy_runtime_api::http::Response>) -> Option<u16> {
    err.raw_response().map(|r| r.status().as_u16())
}

fn code<E: ProvideErrorMetadata>(err: &SdkError<E, aws_smithy_runtime_api::http::Response>) -> Option<&str> {
    match err {
        SdkError::ServiceError(s) => s.err().code(),
        _ => None,
    }
}

#[async_trait]
impl Backend for S3Backend {
    fn location(&self) -> String {
        self.config.location()
    }

    fn concurrency(&self) -> usize {
        self.config.connections
    }

    fn wire_stats(&self) -> WireStats {
        self.wire.stats()
    }

    /// Data pack uploads are sent with `If-None-Match: *` until the store shows
    /// that it does not support it: a pack that is already stored is then
    /// not replaced (no new version in a versioned bucket), and after the
    /// `412` answer a HEAD checks that what is there has the length of this
    /// encoding (a truncated object is replaced, as it counts as absent). It is an optimisation only, never relied on: a store that
    /// ignores the header (Garage) simply stores the equivalent object again
    /// (invariant 3), and one that refuses it (`501`, `NotImplemented`, a
    /// `400` naming the header) turns it off for the rest of the process
    /// after the upload is retried without it.
    async fn put(&self, key: &str, data: Bytes) -> BackendResult<()> {
        use std::sync::atomic::Ordering;
        let client = self.client().await?;
        // Only data packs go to the configured storage class; a pack's
        // name is the hash of its bytes, so a stored one is never replaced.
        let data_pack = key.starts_with("data/");
        let conditional = data_pack && self.conditional.load(Ordering::Relaxed);
        let len = data.len() as u64;
        let body = data;
        let request = |if_none_match: bool| {
            let mut req = client.put_object().bucket(&self.config.bucket).key(self.full_key(key));
            if let Some(class) = self.data_pack_class()
                && data_pack
            {
                req = req.storage_class(StorageClass::from(class.to_ascii_uppercase().as_str()));
            }
            if if_none_match {
                req = req.if_none_match("*");
            }
            if let Some(lock) = self.object_lock.get()
                && super::retained_kind(key)
            {
                let until = jiff::Timestamp::now().as_second() + i64::from(lock.days) * 86_400;
                // S3 wants a checksum of every upload that sets a retention.
                req = req
                    .object_lock_mode(lock_mode(lock.mode))
                    .object_lock_retain_until_date(aws_sdk_s3::primitives::DateTime::from_secs(until))
                    .checksum_algorithm(aws_sdk_s3::types::ChecksumAlgorithm::Crc32);
            }
            // The body is in memory, so the SDK can resend it on a retry;
            // a clone of `Bytes` shares it.
            req.body(ByteStream::from(body.clone()))
        };
        self.wire.put(len);
        match request(conditional).send().await {
            Ok(_) => Ok(()),
            Err(e) if conditional && (status(&e) == Some(412) || code(&e) == Some("PreconditionFailed")) => {
                // Something is stored under the key, but a truncated or
                // damaged object must be replaced (it counts as absent). An
                // equivalent encoding has exactly this length, so a HEAD
                // (cheaper than a PUT) tells which.
                self.wire.head();
                let head = client.head_object().bucket(&self.config.bucket).key(self.full_key(key)).send().await;
                if head.ok().and_then(|h| h.content_length()) == Some(len as i64) {
                    tracing::debug!("PUT {key}: already stored");
                    return Ok(());
                }
                tracing::info!("PUT {key}: the stored object has another length; replacing it");
                self.wire.put(len);
                request(false).send().await.map(|_| ()).map_err(|e| self.error("PUT", key, e))
            }
            // AWS: another conditional upload of the same key was in
            // progress. Equivalent objects: upload it plainly.
            Err(e) if conditional && code(&e) == Some("ConditionalRequestConflict") => {
                self.wire.put(len);
                request(false).send().await.map(|_| ()).map_err(|e| self.error("PUT", key, e))
            }
            Err(e) if conditional && unsupported_condition(&e) => {
                tracing::info!(
                    "{}: the store does not support conditional uploads ({}); uploading without them",
                    self.location(),
                    code(&e).unwrap_or("HTTP error")
                );
                self.conditional.store(false, Ordering::Relaxed);
                self.wire.put(len);
                request(false).send().await.map(|_| ()).map_err(|e| self.error("PUT", key, e))
            }
            Err(e) => Err(self.error("PUT", key, e)),
        }
    }

    async fn get(&self, key: &str, max_len: u64) -> BackendResult<Vec<u8>> {
        self.get_object(key, None, max_len).await
    }

    async fn get_range(&self, key: &str, offset: u64, len: u64) -> BackendResult<Vec<u8>> {
        if len == 0 {
            return Ok(Vec::new());
        }
        let data = self.get_object(key, Some((offset, len)), len).await?;
        if data.len() as u64 != len {
            return Err(super::short_range(key, offset, len, data.len() as u64));
        }
        Ok(data)
    }

    async fn list(&self, prefix: &str) -> BackendResult<Vec<Entry>> {
        if SHARDED.contains(&prefix) { self.list_sharded(prefix).await } else { self.list_all(prefix).await }
    }

    async fn delete(&self, key: &str) -> BackendResult<()> {
        let client = self.client().await?;
        self.wire.delete();
        match client.delete_object().bucket(&self.config.bucket).key(self.full_key(key)).send().await {
            Ok(_) => Ok(()),
            Err(e) if status(&e) == Some(404) && code(&e) != Some("NoSuchBucket") => Ok(()),
            Err(e) => Err(self.error("DELETE", key, e)),
        }
    }

    async fn sync(&self) -> BackendResult<()> {
        // An S3 PUT is durable when it returns.
        Ok(())
    }

    async fn create(&self) -> BackendResult<()> {
        // S3 has no folders to make; connecting checks (or creates) the bucket.
        self.client().await.map(|_| ())
    }

    fn storage_classes(&self) -> Option<&dyn StorageClasses> {
        Some(self)
    }

    fn retention(&self) -> Option<&dyn Retention> {
        Some(self)
    }
}

fn lock_mode(mode: LockMode) -> aws_sdk_s3::types::ObjectLockMode {
    match mode {
        LockMode::Compliance => aws_sdk_s3::types::ObjectLockMode::Compliance,
        LockMode::Governance => aws_sdk_s3::types::ObjectLockMode::Governance,
    }
}

#[async_trait]
impl Retention for S3Backend {
    fn use_object_lock(&self, lock: ObjectLock) {
        let _ = self.object_lock.set(lock);
    }

    async fn bucket_has_object_lock(&self) -> BackendResult<bool> {
        let client = self.client().await?;
        self.wire.get();
        match client.get_object_lock_configuration().bucket(&self.config.bucket).send().await {
            Ok(out) => Ok(out
                .object_lock_configuration()
                .and_then(|c| c.object_lock_enabled())
                .is_some_and(|e| *e == aws_sdk_s3::types::ObjectLockEnabled::Enabled)),
            Err(e) if code(&e) == Some("ObjectLockConfigurationNotFoundError") || status(&e) == Some(404) => Ok(false),
            Err(e) => Err(self.error("GET object lock configuration of", &self.config.bucket, e)),
        }
    }

    async fn retained_until(&self, key: &str) -> BackendResult<Option<i64>> {
        let client = self.client().await?;
        self.wire.head();
        match client.head_object().bucket(&self.config.bucket).key(self.full_key(key)).send().await {
            Ok(head) => Ok(head.object_lock_retain_until_date().map(|d| d.secs())),
            Err(e) if status(&e) == Some(404) => Err(BackendError::NotFound { key: key.to_string() }),
            Err(e) => Err(self.error("HEAD", key, e)),
        }
    }

    async fn extend_retention(&self, key: &str, until: i64, mode: LockMode) -> BackendResult<()> {
        use aws_sdk_s3::types::{ObjectLockRetention, ObjectLockRetentionMode};
        let client = self.client().await?;
        let mode = match mode {
            LockMode::Compliance => ObjectLockRetentionMode::Compliance,
            LockMode::Governance => ObjectLockRetentionMode::Governance,
        };
        let retention = ObjectLockRetention::builder()
            .mode(mode)
            .retain_until_date(aws_sdk_s3::primitives::DateTime::from_secs(until))
            .build();
        self.wire.put(0);
        client
            .put_object_retention()
            .bucket(&self.config.bucket)
            .key(self.full_key(key))
            .retention(retention)
            .checksum_algorithm(aws_sdk_s3::types::ChecksumAlgorithm::Crc32)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| self.error("PUT retention of", key, e))
    }
}

/// Parses the `x-amz-restore` header of a HEAD answer:
/// `ongoing-request="true"`, or `ongoing-request="false", expiry-date="…"`.
fn parse_restore_header(header: &str) -> RestoreStatus {
    let ongoing = header.split(',').map(str::trim).find_map(|part| part.strip_prefix("ongoing-request="));
    if ongoing.map(|v| v.trim_matches('"')) == Some("true") {
        return RestoreStatus::InProgress;
    }
    // The date itself holds a comma ("Fri, 21 Dec 2012 …"): take it up to its closing quote.
    let expires = header
        .split_once("expiry-date=\"")
        .and_then(|(_, rest)| rest.split_once('"'))
        .map(|(date, _)| date.to_string());
    RestoreStatus::Readable { expires }
}

#[async_trait]
impl StorageClasses for S3Backend {
    fn data_class(&self) -> Option<String> {
        self.data_pack_class().map(|c| c.to_ascii_uppercase())
    }

    fn use_recorded_data_class(&self, class: &str) {
        let _ = self.recorded_class.set(class.to_ascii_uppercase());
    }

    async fn restore_status(&self, key: &str) -> BackendResult<RestoreStatus> {
        let client = self.client().await?;
        self.wire.head();
        let head = match client.head_object().bucket(&self.config.bucket).key(self.full_key(key)).send().await {
            Ok(head) => head,
            Err(e) if status(&e) == Some(404) => return Err(BackendError::NotFound { key: key.to_string() }),
            Err(e) => return Err(self.error("HEAD", key, e)),
        };
        let archived = head.storage_class().is_some_and(|c| super::is_archive_class(c.as_str()));
        match head.restore() {
            Some(header) => Ok(parse_restore_header(header)),
            None if archived => Ok(RestoreStatus::Archived),
            None => Ok(RestoreStatus::Readable { expires: None }),
        }
    }

    async fn request_restore(&self, key: &str, days: u32, tier: RetrievalTier) -> BackendResult<RestoreStatus> {
        use aws_sdk_s3::types::{GlacierJobParameters, RestoreRequest, Tier};
        let client = self.client().await?;
        let tier = match tier {
            RetrievalTier::Bulk => Tier::Bulk,
            RetrievalTier::Standard => Tier::Standard,
            RetrievalTier::Expedited => Tier::Expedited,
        };
        let job = GlacierJobParameters::builder()
            .tier(tier)
            .build()
            .map_err(|e| self.unavailable(format!("RestoreObject {key}: {e}")))?;
        let request = RestoreRequest::builder().days(days.max(1) as i32).glacier_job_parameters(job).build();
        // Billed as a PUT-class request.
        self.wire.put(0);
        let sent = client
            .restore_object()
            .bucket(&self.config.bucket)
            .key(self.full_key(key))
            .restore_request(request)
            .send()
            .await;
        match sent {
            // 200: a restored copy is there already; 202: accepted.
            Ok(_) => match self.restore_status(key).await? {
                RestoreStatus::Archived => Ok(RestoreStatus::InProgress),
                other => Ok(other),
            },
            Err(e) if code(&e) == Some("RestoreAlreadyInProgress") || status(&e) == Some(409) => {
                Ok(RestoreStatus::InProgress)
            }
            Err(e) if status(&e) == Some(404) => Err(BackendError::NotFound { key: key.to_string() }),
            Err(e) => Err(self.error("RestoreObject", key, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_and_keys() {
        let c = S3Config::new("photos", "/coffer/main/");
        assert_eq!(c.prefix, "coffer/main");
        assert_eq!(c.location(), "s3:photos/coffer/main");
        let b = S3Backend::new(c).unwrap();
        assert_eq!(b.full_key("config"), "coffer/main/config");
        let mut c = S3Config::new("photos", "");
        c.endpoint = Some("http://127.0.0.1:9000".into());
        assert_eq!(c.location(), "s3:http://127.0.0.1:9000/photos");
        assert_eq!(S3Backend::new(c).unwrap().full_key("keys/ab"), "keys/ab");
    }

    #[test]
    fn restore_headers() {
        assert_eq!(parse_restore_header("ongoing-request=\"true\""), RestoreStatus::InProgress);
        assert_eq!(
            parse_restore_header("ongoing-request=\"false\", expiry-date=\"Fri, 21 Dec 2012 00:00:00 GMT\""),
            RestoreStatus::Readable { expires: Some("Fri, 21 Dec 2012 00:00:00 GMT".into()) }
        );
    }

    #[test]
    fn well_formed_shards() {
        assert_eq!(shard_of("data/ab/ab12", "data/"), Some("ab"));
        assert_eq!(shard_of("trees/00/x", "trees/"), Some("00"));
        for bad in ["data/AB/ab", "data/zz/x", "data/abc", "data/a/", "data/ab", "tree/ab/x"] {
            assert_eq!(shard_of(bad, "data/"), None, "{bad}");
        }
    }

    #[test]
    fn validation() {
        let ok = S3Config::new("my-bucket", "");
        assert!(ok.validate().is_ok());
        for bad in ["", "ab", "My_Bucket", "-bucket", "a/b"] {
            assert!(S3Config::new(bad, "").validate().is_err(), "{bad}");
        }
        let mut c = ok.clone();
        for class in ["deep_archive", "GLACIER", "STANDARD_IA", "GLACIER_IR"] {
            c.storage_class = Some(class.into());
            assert!(c.validate().is_ok(), "{class}");
        }
        for bad in ["", "STANDARD IA", "x-y", "GLACIER;"] {
            c.storage_class = Some(bad.into());
            assert!(c.validate().is_err(), "{bad:?}");
        }
        c.storage_class = None;
        c.connections = 0;
        assert!(c.validate().is_err());
        let mut c = ok;
        c.endpoint = Some("ftp://x".into());
        assert!(c.validate().is_err());
    }
}
