//! A standalone S3-protocol server for the end-to-end benchmark's
//! `--backend s3`: s3s-fs serving a folder on 127.0.0.1 with SigV4 checked,
//! optionally holding every request for a fixed time first, as a link with
//! that round-trip time would.
//!
//! ```text
//! coffer-s3-server --root DIR [--port N] [--latency-ms MS] [--bucket NAME]...
//! ```
//!
//! Prints `listening on 127.0.0.1:PORT` once it accepts connections, then
//! serves until killed. Credentials: `AWS_ACCESS_KEY_ID` /
//! `AWS_SECRET_ACCESS_KEY` from its environment (both required). Only for
//! benchmarks and tests: it binds 127.0.0.1 only.

use std::path::PathBuf;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;

struct Args {
    root: PathBuf,
    port: u16,
    latency: Duration,
    buckets: Vec<String>,
}

fn usage(msg: &str) -> ! {
    eprintln!("coffer-s3-server: {msg}");
    eprintln!("usage: coffer-s3-server --root DIR [--port N] [--latency-ms MS] [--bucket NAME]...");
    std::process::exit(2)
}

fn parse() -> Args {
    let mut args = Args { root: PathBuf::new(), port: 0, latency: Duration::ZERO, buckets: Vec::new() };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| usage(&format!("{a} needs a value")));
        match a.as_str() {
            "--root" => args.root = PathBuf::from(value()),
            "--port" => args.port = value().parse().unwrap_or_else(|_| usage("--port: not a port number")),
            "--latency-ms" => {
                args.latency =
                    Duration::from_millis(value().parse().unwrap_or_else(|_| usage("--latency-ms: not a number")))
            }
            "--bucket" => args.buckets.push(value()),
            _ => usage(&format!("unknown argument {a}")),
        }
    }
    if args.root.as_os_str().is_empty() {
        usage("--root is required");
    }
    args
}

/// The S3 service, each request held for the latency first.
#[derive(Clone)]
struct Delayed {
    service: s3s::service::S3Service,
    latency: Duration,
}

type Answer = std::pin::Pin<Box<dyn std::future::Future<Output = Result<s3s::HttpResponse, s3s::HttpError>> + Send>>;

impl hyper::service::Service<http::Request<hyper::body::Incoming>> for Delayed {
    type Response = s3s::HttpResponse;
    type Error = s3s::HttpError;
    type Future = Answer;

    fn call(&self, req: http::Request<hyper::body::Incoming>) -> Answer {
        let (service, latency) = (self.service.clone(), self.latency);
        Box::pin(async move {
            if !latency.is_zero() {
                tokio::time::sleep(latency).await;
            }
            hyper::service::Service::call(&service, req).await
        })
    }
}

fn main() {
    let args = parse();
    let key = std::env::var("AWS_ACCESS_KEY_ID").unwrap_or_else(|_| usage("AWS_ACCESS_KEY_ID is not set"));
    let secret = std::env::var("AWS_SECRET_ACCESS_KEY").unwrap_or_else(|_| usage("AWS_SECRET_ACCESS_KEY is not set"));
    for bucket in &args.buckets {
        if let Err(e) = std::fs::create_dir_all(args.root.join(bucket)) {
            usage(&format!("cannot create bucket folder {bucket}: {e}"));
        }
    }
    let fs = s3s_fs::FileSystem::new(&args.root).unwrap_or_else(|e| usage(&format!("--root: {e:?}")));
    let mut builder = s3s::service::S3ServiceBuilder::new(fs);
    builder.set_auth(s3s::auth::SimpleAuth::from_single(key, secret));
    let service = Delayed { service: builder.build(), latency: args.latency };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap_or_else(|e| usage(&e.to_string()));
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", args.port))
            .await
            .unwrap_or_else(|e| usage(&format!("cannot listen on 127.0.0.1:{}: {e}", args.port)));
        let addr = listener.local_addr().unwrap_or_else(|e| usage(&e.to_string()));
        println!("listening on {addr}");
        use std::io::Write;
        let _ = std::io::stdout().flush();
        loop {
            let Ok((socket, _)) = listener.accept().await else { continue };
            // As real stores do: without it, a response written in two parts
            // waits for the client's delayed ACK (40 ms) on every request.
            let _ = socket.set_nodelay(true);
            let service = service.clone();
            tokio::spawn(async move {
                let _ = ConnBuilder::new(TokioExecutor::new()).serve_connection(TokioIo::new(socket), service).await;
            });
        }
    });
}
