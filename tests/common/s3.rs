//! A real S3-protocol server for the tests: `s3s-fs` serving a temporary
//! folder over HTTP on 127.0.0.1, with SigV4 signatures checked against a
//! fixed access key and secret. It runs on its own thread and runtime, so
//! the binary under test and the library talk to it over real sockets.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use assert_cmd::Command;
use tempfile::TempDir;

use super::Env;

pub const ACCESS_KEY: &str = "COFFERTESTACCESSKEY";
pub const SECRET_KEY: &str = "coffer-test-secret-key-0123456789abcdef";
pub const REGION: &str = "us-east-1";

/// An answer the server gives in place of the S3 service's: an HTTP status
/// and an S3 error code, as a store under load or without a feature would.
pub type Fault = (u16, &'static str);

/// Sees every request before the S3 service does, and may answer it with a
/// [`Fault`] instead.
pub type Hook = Arc<dyn Fn(&http::Request<hyper::body::Incoming>) -> Option<Fault> + Send + Sync>;

pub struct S3Server {
    /// The folder served: one sub-folder per bucket.
    dir: TempDir,
    addr: SocketAddr,
    running: Option<Running>,
    hook: Option<Hook>,
    /// Storage classes and restores, when the server simulates them.
    cold: Option<Arc<Cold>>,
}

struct Running {
    stop: tokio::sync::oneshot::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl S3Server {
    /// Starts a server on a free port, with one empty bucket named `bucket`.
    pub fn start() -> S3Server {
        S3Server::start_with(None)
    }

    /// Starts a server whose requests go through `hook` first.
    pub fn start_with_hook(
        hook: impl Fn(&http::Request<hyper::body::Incoming>) -> Option<Fault> + Send + Sync + 'static,
    ) -> S3Server {
        S3Server::start_with(Some(Arc::new(hook)))
    }

    /// Starts a server that keeps objects in the storage classes they are
    /// uploaded with, as AWS does: one in GLACIER or DEEP_ARCHIVE refuses
    /// GETs (403 `InvalidObjectState`) until a RestoreObject request has
    /// been made and `cold`'s delay has passed.
    pub fn start_cold() -> (S3Server, Arc<Cold>) {
        let cold = Arc::new(Cold::default());
        (S3Server::start_full(None, Some(cold.clone())), cold)
    }

    fn start_with(hook: Option<Hook>) -> S3Server {
        S3Server::start_full(hook, None)
    }

    fn start_full(hook: Option<Hook>, cold: Option<Arc<Cold>>) -> S3Server {
        let dir = tempfile::tempdir().expect("server temp dir");
        std::fs::create_dir(dir.path().join("bucket")).expect("create bucket folder");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let running = serve(dir.path(), listener, hook.clone(), cold.clone());
        S3Server { dir, addr, running: Some(running), hook, cold }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The coffer location of `bucket/prefix` on this server.
    pub fn url(&self, bucket_and_prefix: &str) -> String {
        format!("s3:{}/{bucket_and_prefix}", self.endpoint())
    }

    /// Where the objects of `bucket` are stored on disk.
    pub fn bucket_dir(&self, bucket: &str) -> PathBuf {
        self.dir.path().join(bucket)
    }

    /// Stops the server: the listener and every open connection are closed.
    pub fn stop(&mut self) {
        if let Some(r) = self.running.take() {
            let _ = r.stop.send(());
            r.thread.join().expect("server thread");
        }
    }

    /// Starts the server again on the same port, serving the same folder.
    pub fn restart(&mut self) {
        self.stop();
        let listener = std::net::TcpListener::bind(self.addr).expect("rebind the same port");
        self.running = Some(serve(self.dir.path(), listener, self.hook.clone(), self.cold.clone()));
    }

    /// A library backend for `bucket/prefix` on this server, with the test
    /// credentials (nothing read from the environment).
    pub fn backend(&self, bucket: &str, prefix: &str) -> coffer_core::backend::s3::S3Backend {
        backend_at(&self.endpoint(), bucket, prefix, ACCESS_KEY, SECRET_KEY)
    }

    /// Every object key stored in `bucket` (as relative paths of files),
    /// leaving out the server's own metadata.
    pub fn keys(&self, bucket: &str) -> Vec<String> {
        let dir = self.bucket_dir(bucket);
        if !dir.exists() {
            return Vec::new();
        }
        super::files_below(&dir)
            .into_iter()
            .map(|p| p.to_string_lossy().into_owned())
            .filter(|k| !k.starts_with(".s3s") && !k.contains("/.s3s") && !k.ends_with(".s3s-internal.json"))
            .collect()
    }
}

/// A library backend for `bucket/prefix` on the S3 server at `endpoint`
/// (path-style, in [`REGION`]), with these keys and nothing read from the
/// environment.
pub fn backend_at(
    endpoint: &str,
    bucket: &str,
    prefix: &str,
    access_key: &str,
    secret_key: &str,
) -> coffer_core::backend::s3::S3Backend {
    use coffer_core::backend::s3::{S3Backend, S3Config, StaticCredentials};
    let mut config = S3Config::new(bucket, prefix);
    config.endpoint = Some(endpoint.to_string());
    config.path_style = true;
    config.region = Some(REGION.into());
    config.credentials =
        Some(StaticCredentials { access_key_id: access_key.into(), secret_access_key: secret_key.into() });
    S3Backend::new(config).expect("backend")
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The S3 service behind a [`Hook`].
#[derive(Clone)]
struct Hooked {
    service: s3s::service::S3Service,
    hook: Option<Hook>,
}

type Answer = std::pin::Pin<Box<dyn std::future::Future<Output = Result<s3s::HttpResponse, s3s::HttpError>> + Send>>;

impl hyper::service::Service<http::Request<hyper::body::Incoming>> for Hooked {
    type Response = s3s::HttpResponse;
    type Error = s3s::HttpError;
    type Future = Answer;

    fn call(&self, req: http::Request<hyper::body::Incoming>) -> Answer {
        if let Some((status, code)) = self.hook.as_ref().and_then(|h| h(&req)) {
            let body = format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>injected by the test server</Message></Error>"
            );
            let response = http::Response::builder()
                .status(status)
                .header("content-type", "application/xml")
                .body(s3s::Body::from(body))
                .expect("error response");
            return Box::pin(async move { Ok(response) });
        }
        Box::pin(hyper::service::Service::call(&self.service, req))
    }
}

fn serve(root: &Path, listener: std::net::TcpListener, hook: Option<Hook>, cold: Option<Arc<Cold>>) -> Running {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::server::conn::auto::Builder as ConnBuilder;
    use s3s::auth::SimpleAuth;
    use s3s::service::S3ServiceBuilder;

    listener.set_nonblocking(true).expect("nonblocking listener");
    let fs = s3s_fs::FileSystem::new(root).expect("s3s-fs root");
    let mut builder = match cold {
        Some(cold) => S3ServiceBuilder::new(ColdStore { fs, cold }),
        None => S3ServiceBuilder::new(fs),
    };
    builder.set_auth(SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
    let service = Hooked { service: builder.build(), hook };
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::spawn(move || {
        let rt =
            tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("server runtime");
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((socket, _)) = accepted else { continue };
                        // As real stores and the benchmark's server do: without
                        // it, a response written in two parts waits for the
                        // client's delayed ACK (40 ms) on every request.
                        let _ = socket.set_nodelay(true);
                        let service = service.clone();
                        tokio::spawn(async move {
                            let http = ConnBuilder::new(TokioExecutor::new());
                            let _ = http.serve_connection(TokioIo::new(socket), service).await;
                        });
                    }
                    _ = &mut stopped => break,
                }
            }
        });
        // Dropping the runtime cancels every connection task, closing its socket.
        rt.shutdown_background();
    });
    Running { stop, thread }
}

/// What a simulated cold store knows of its objects' classes and restores.
#[derive(Default)]
pub struct Cold {
    objects: std::sync::Mutex<std::collections::HashMap<String, ColdObject>>,
    /// How long a restore request takes to complete.
    delay: std::sync::Mutex<std::time::Duration>,
    /// RestoreObject requests accepted, GETs refused, and per tier.
    pub restores: std::sync::atomic::AtomicUsize,
    pub refused_gets: std::sync::atomic::AtomicUsize,
    tiers: std::sync::Mutex<Vec<String>>,
}

#[derive(Clone, Debug, Default)]
struct ColdObject {
    class: Option<String>,
    /// When a restore requested for it completes.
    restored_at: Option<std::time::Instant>,
}

impl ColdObject {
    fn archived(&self) -> bool {
        self.class.as_deref().is_some_and(|c| c == "GLACIER" || c == "DEEP_ARCHIVE")
    }

    fn readable(&self) -> bool {
        !self.archived() || self.restored_at.is_some_and(|t| t <= std::time::Instant::now())
    }
}

impl Cold {
    /// Restore requests complete this long after they are made.
    pub fn set_delay(&self, delay: std::time::Duration) {
        *self.delay.lock().unwrap() = delay;
    }

    /// The class `bucket/key` was stored in (`None`: STANDARD).
    pub fn class_of(&self, bucket_and_key: &str) -> Option<String> {
        self.objects.lock().unwrap().get(bucket_and_key).and_then(|o| o.class.clone())
    }

    /// Keys (`bucket/key`) stored in an archive class.
    pub fn archived_keys(&self) -> Vec<String> {
        let mut keys: Vec<String> =
            self.objects.lock().unwrap().iter().filter(|(_, o)| o.archived()).map(|(k, _)| k.clone()).collect();
        keys.sort();
        keys
    }

    /// Completes every restore under way at once.
    pub fn complete_restores(&self) {
        let now = std::time::Instant::now();
        for o in self.objects.lock().unwrap().values_mut() {
            if let Some(t) = o.restored_at.as_mut() {
                *t = (*t).min(now);
            }
        }
    }

    /// Puts every restored copy away again, as the store does when their days are up.
    pub fn expire_restores(&self) {
        for o in self.objects.lock().unwrap().values_mut() {
            o.restored_at = None;
        }
    }

    /// The tiers restore requests asked for, in order.
    pub fn tiers(&self) -> Vec<String> {
        self.tiers.lock().unwrap().clone()
    }

    fn get(&self, bucket: &str, key: &str) -> ColdObject {
        self.objects.lock().unwrap().get(&format!("{bucket}/{key}")).cloned().unwrap_or_default()
    }
}

/// s3s-fs behind storage classes: it stores the bytes, this keeps each
/// object's class and restore state, and refuses what AWS refuses.
struct ColdStore {
    fs: s3s_fs::FileSystem,
    cold: Arc<Cold>,
}

#[async_trait::async_trait]
impl s3s::S3 for ColdStore {
    async fn create_bucket(
        &self,
        req: s3s::S3Request<s3s::dto::CreateBucketInput>,
    ) -> s3s::S3Result<s3s::S3Response<s3s::dto::CreateBucketOutput>> {
        self.fs.create_bucket(req).await
    }

    async fn head_bucket(
        &self,
        req: s3s::S3Request<s3s::dto::HeadBucketInput>,
    ) -> s3s::S3Result<s3s::S3Response<s3s::dto::HeadBucketOutput>> {
        self.fs.head_bucket(req).await
    }

    async fn put_object(
        &self,
        mut req: s3s::S3Request<s3s::dto::PutObjectInput>,
    ) -> s3s::S3Result<s3s::S3Response<s3s::dto::PutObjectOutput>> {
        let class = req.input.storage_class.take().map(|c| c.as_str().to_string()).filter(|c| c != "STANDARD");
        let name = format!("{}/{}", req.input.bucket, req.input.key);
        let out = self.fs.put_object(req).await?;
        self.cold.objects.lock().unwrap().insert(name, ColdObject { class, restored_at: None });
        Ok(out)
    }

    async fn get_object(
        &self,
        req: s3s::S3Request<s3s::dto::GetObjectInput>,
    ) -> s3s::S3Result<s3s::S3Response<s3s::dto::GetObjectOutput>> {
        if !self.cold.get(&req.input.bucket, &req.input.key).readable() {
            self.cold.refused_gets.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Err(s3s::s3_error!(
                InvalidObjectState,
                "The operation is not valid for the object's storage class"
            ));
        }
        self.fs.get_object(req).await
    }

    async fn head_object(
        &self,
        req: s3s::S3Request<s3s::dto::HeadObjectInput>,
    ) -> s3s::S3Result<s3s::S3Response<s3s::dto::HeadObjectOutput>> {
        let object = self.cold.get(&req.input.bucket, &req.input.key);
        let mut out = self.fs.head_object(req).await?;
        out.output.storage_class = object.class.clone().map(s3s::dto::StorageClass::from);
        if object.archived() {
            out.output.restore = match object.restored_at {
                None => None,
                Some(_) if object.readable() => {
                    Some("ongoing-request=\"false\", expiry-date=\"Fri, 01 Jan 2100 00:00:00 GMT\"".into())
                }
                Some(_) => Some("ongoing-request=\"true\"".into()),
            };
        }
        Ok(out)
    }

    async fn restore_object(
        &self,
        req: s3s::S3Request<s3s::dto::RestoreObjectInput>,
    ) -> s3s::S3Result<s3s::S3Response<s3s::dto::RestoreObjectOutput>> {
        let name = format!("{}/{}", req.input.bucket, req.input.key);
        let tier = req
            .input
            .restore_request
            .as_ref()
            .and_then(|r| r.glacier_job_parameters.as_ref().map(|j| j.tier.as_str().to_string()))
            .unwrap_or_default();
        let delay = *self.cold.delay.lock().unwrap();
        let mut objects = self.cold.objects.lock().unwrap();
        let Some(object) = objects.get_mut(&name).filter(|o| o.archived()) else {
            return Err(s3s::s3_error!(
                InvalidObjectState,
                "Restore is not allowed for the object's current storage class"
            ));
        };
        match object.restored_at {
            Some(_) if object.readable() => Ok(s3s::S3Response::new(s3s::dto::RestoreObjectOutput::default())),
            Some(_) => Err(s3s::s3_error!(RestoreAlreadyInProgress, "Object restore is already in progress")),
            None => {
                object.restored_at = Some(std::time::Instant::now() + delay);
                self.cold.restores.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                self.cold.tiers.lock().unwrap().push(tier);
                let mut out = s3s::S3Response::new(s3s::dto::RestoreObjectOutput::default());
                out.status = Some(http::StatusCode::ACCEPTED);
                Ok(out)
            }
        }
    }

    async fn list_objects_v2(
        &self,
        req: s3s::S3Request<s3s::dto::ListObjectsV2Input>,
    ) -> s3s::S3Result<s3s::S3Response<s3s::dto::ListObjectsV2Output>> {
        let bucket = req.input.bucket.clone();
        let mut out = self.fs.list_objects_v2(req).await?;
        for object in out.output.contents.iter_mut().flatten() {
            let class = object.key.as_deref().and_then(|k| self.cold.get(&bucket, k).class);
            object.storage_class = Some(s3s::dto::ObjectStorageClass::from(class.unwrap_or_else(|| "STANDARD".into())));
        }
        Ok(out)
    }

    async fn delete_object(
        &self,
        req: s3s::S3Request<s3s::dto::DeleteObjectInput>,
    ) -> s3s::S3Result<s3s::S3Response<s3s::dto::DeleteObjectOutput>> {
        let name = format!("{}/{}", req.input.bucket, req.input.key);
        let out = self.fs.delete_object(req).await?;
        self.cold.objects.lock().unwrap().remove(&name);
        Ok(out)
    }
}

/// The variables that point the binary at `url` with the test credentials,
/// and those removed so that nothing of the caller's AWS configuration leaks in.
fn vars(env: &Env, url: &str) -> (Vec<(&'static str, std::ffi::OsString)>, [&'static str; 8]) {
    let set = vec![
        ("COFFER_REPOSITORY", url.into()),
        ("COFFER_PASSWORD", super::PASSWORD.into()),
        ("AWS_ACCESS_KEY_ID", ACCESS_KEY.into()),
        ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.into()),
        ("AWS_REGION", REGION.into()),
        ("AWS_CONFIG_FILE", env.path("no-aws-config").into()),
        ("AWS_SHARED_CREDENTIALS_FILE", env.path("no-aws-credentials").into()),
        ("AWS_EC2_METADATA_DISABLED", "true".into()),
        ("COFFER_S3_MAX_ATTEMPTS", "3".into()),
        ("COFFER_CACHE_DIR", env.path("cache").into()),
        ("COFFER_STATE_DIR", env.path("state").into()),
    ];
    let removed = [
        "COFFER_PASSWORD_FILE",
        "COFFER_PASSWORD_COMMAND",
        "COFFER_LOG",
        "AWS_PROFILE",
        "AWS_SESSION_TOKEN",
        "AWS_DEFAULT_REGION",
        "AWS_ENDPOINT_URL",
        "COFFER_S3_REGION",
    ];
    (set, removed)
}

/// The binary pointed at `url` on an S3 server, with the test credentials in
/// the environment and nothing of the caller's AWS configuration.
pub fn coffer(env: &Env, url: &str) -> Command {
    let mut cmd = coffer_with_vars(env, url);
    cmd.env("COFFER_CACHE_DIR", env.path("cache"));
    cmd
}

/// The binary with the S3 variables for `url` (and no cache set).
pub(super) fn coffer_with_vars(env: &Env, url: &str) -> Command {
    let mut cmd = Command::cargo_bin("coffer").expect("coffer binary");
    let (set, removed) = vars(env, url);
    for var in removed {
        cmd.env_remove(var);
    }
    cmd.envs(set);
    cmd
}

/// The same as a plain process, for a test that must run it in the background.
pub fn coffer_process(env: &Env, url: &str) -> std::process::Command {
    let mut cmd = std::process::Command::new(assert_cmd::cargo::cargo_bin("coffer"));
    let (set, removed) = vars(env, url);
    for var in removed {
        cmd.env_remove(var);
    }
    cmd.envs(set);
    cmd
}

/// A library backend for `bucket/prefix` on this server, with the test credentials.
pub fn library_backend(server: &S3Server, prefix: &str) -> coffer_core::backend::s3::S3Backend {
    server.backend("bucket", prefix)
}

/// A repository under `bucket/<prefix>` on a server of its own, for the
/// tests written against [`super::Store`].
pub struct S3Store {
    pub server: S3Server,
    pub prefix: String,
}

impl S3Store {
    pub fn start(prefix: &str) -> S3Store {
        S3Store { server: S3Server::start(), prefix: prefix.to_string() }
    }

    fn library_backend(&self) -> coffer_core::backend::s3::S3Backend {
        self.server.backend("bucket", &self.prefix)
    }
}

impl super::Store for S3Store {
    fn backend(&self) -> std::sync::Arc<dyn coffer_core::backend::Backend> {
        std::sync::Arc::new(self.library_backend())
    }

    fn location(&self) -> String {
        self.server.url(&format!("bucket/{}", self.prefix))
    }

    fn remove(&self, key: &str) {
        use coffer_core::backend::Backend;
        let backend = self.library_backend();
        let rt = coffer_core::repo::new_runtime().expect("runtime");
        rt.block_on(backend.delete(key)).expect("delete object");
    }
}
