//! An OTLP/HTTP trace receiver on loopback: decodes what is exported with
//! the official protobuf definitions (opentelemetry-proto) and keeps every
//! span with the service that sent it.

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use prost::Message;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

/// A span as received, ids in hex.
#[derive(Clone, Debug)]
pub struct ReceivedSpan {
    pub service: String,
    pub name: String,
    pub trace_id: String,
    pub span_id: String,
    pub parent_span_id: String,
    /// Every attribute, its value as text.
    pub attributes: Vec<(String, String)>,
    /// The status message (set on failures).
    pub status_message: String,
}

impl ReceivedSpan {
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

pub struct OtlpReceiver {
    pub addr: SocketAddr,
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn text(value: Option<&Value>) -> String {
    match value {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

async fn traces(State(spans): State<Arc<Mutex<Vec<ReceivedSpan>>>>, body: Bytes) -> Vec<u8> {
    let request = ExportTraceServiceRequest::decode(body).expect("an OTLP ExportTraceServiceRequest");
    let mut received = spans.lock().unwrap();
    for resource_spans in request.resource_spans {
        let service = resource_spans
            .resource
            .iter()
            .flat_map(|r| r.attributes.iter())
            .find(|a| a.key == "service.name")
            .map(|a| text(a.value.as_ref().and_then(|v| v.value.as_ref())))
            .unwrap_or_default();
        for scope in resource_spans.scope_spans {
            for span in scope.spans {
                received.push(ReceivedSpan {
                    service: service.clone(),
                    name: span.name,
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    attributes: span
                        .attributes
                        .iter()
                        .map(|a| (a.key.clone(), text(a.value.as_ref().and_then(|v| v.value.as_ref()))))
                        .collect(),
                    status_message: span.status.map(|s| s.message).unwrap_or_default(),
                });
            }
        }
    }
    // An empty ExportTraceServiceResponse: everything was accepted.
    vec![]
}

impl OtlpReceiver {
    pub async fn start() -> OtlpReceiver {
        let spans = Arc::<Mutex<Vec<ReceivedSpan>>>::default();
        let app = Router::new()
            .route("/v1/traces", post(traces))
            .with_state(spans.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        OtlpReceiver { addr, spans, task }
    }

    /// The endpoint to give `--otlp-endpoint`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.spans.lock().unwrap().clone()
    }
}

/// Jaeger v2 (built once from tests/controlplane/jaeger, in memory) on
/// loopback: a real OTLP receiver and trace store, read back through its
/// query API. Stopped, by its pid, when dropped.
pub struct Jaeger {
    child: std::process::Child,
    otlp: u16,
    query: u16,
}

impl Drop for Jaeger {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Jaeger {
    pub async fn start(name: &str) -> Jaeger {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/controlplane/controlplane.sh");
        let built = std::process::Command::new(script)
            .arg("jaeger-bin")
            .output()
            .expect("running controlplane.sh jaeger-bin");
        assert!(
            built.status.success(),
            "building jaeger: {}",
            String::from_utf8_lossy(&built.stderr)
        );
        let bin = String::from_utf8(built.stdout).unwrap().trim().to_string();
        let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join("jaeger")
            .join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let (otlp, query, grpc) = (super::free_port(), super::free_port(), super::free_port());
        // Every endpoint on loopback; no internal metrics server.
        let config = format!(
            "service:
  extensions: [jaeger_storage, jaeger_query]
  pipelines:
    traces: {{ receivers: [otlp], processors: [batch], exporters: [jaeger_storage_exporter] }}
  telemetry:
    metrics: {{ level: none }}
extensions:
  jaeger_query:
    storage: {{ traces: memstore }}
    http: {{ endpoint: 127.0.0.1:{query} }}
    grpc: {{ endpoint: 127.0.0.1:{grpc} }}
  jaeger_storage:
    backends:
      memstore: {{ memory: {{ max_traces: 10000 }} }}
receivers:
  otlp:
    protocols:
      http: {{ endpoint: 127.0.0.1:{otlp} }}
processors:
  batch: {{ timeout: 200ms }}
exporters:
  jaeger_storage_exporter: {{ trace_storage: memstore }}
"
        );
        let path = dir.join("config.yaml");
        std::fs::write(&path, config).unwrap();
        let log = std::fs::File::create(dir.join("jaeger.log")).unwrap();
        let child = std::process::Command::new(&bin)
            .arg("--config")
            .arg(&path)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("jaeger starts");
        let jaeger = Jaeger { child, otlp, query };
        super::eventually(super::stack::WAIT, "jaeger to serve", || async {
            tokio::net::TcpStream::connect(("127.0.0.1", otlp)).await.ok()?;
            let answer = reqwest::get(format!("http://127.0.0.1:{query}/api/services"))
                .await
                .ok()?;
            answer.status().is_success().then_some(())
        })
        .await;
        jaeger
    }

    /// The endpoint to give `--otlp-endpoint`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.otlp)
    }

    /// A trace as Jaeger's query API gives it (`data[0]`), once it has one.
    pub async fn trace(&self, trace_id: &str) -> Option<serde_json::Value> {
        let url = format!("http://127.0.0.1:{}/api/traces/{trace_id}", self.query);
        let answer = reqwest::get(url).await.ok()?;
        if !answer.status().is_success() {
            return None;
        }
        let body: serde_json::Value = serde_json::from_slice(&answer.bytes().await.ok()?).ok()?;
        body["data"].get(0).cloned()
    }
}
