//! The JobManager REST API's wire format (`../shared/reference/apis.md`, observed on Flink 2.3.0) and its
//! reading into the neutral model.

use chrono::{DateTime, Utc};
use serde::Deserialize;

use super::failure::describe_failure;
use super::storage::normalized;
use crate::model::{Origin, Savepoint, SavepointType, State};

#[derive(Deserialize)]
pub struct WireOverview {
    #[serde(default)]
    pub jobs: Vec<WireJobOverview>,
}

#[derive(Deserialize, Clone)]
pub struct WireJobOverview {
    pub jid: String,
    pub name: String,
    pub state: String,
    #[serde(rename = "start-time", default)]
    pub start_time: i64,
}

#[derive(Deserialize)]
pub struct WireJob {
    pub state: String,
    #[serde(default)]
    pub vertices: Vec<WireVertex>,
}

#[derive(Deserialize)]
pub struct WireVertex {
    #[serde(default)]
    pub name: String,
    pub status: String,
}

impl WireJob {
    /// Why the job cannot take a savepoint now: every task must run (a FINISHED vertex is fine, Flink
    /// checkpoints around finished tasks), else Flink fails the savepoint with "Not all required tasks
    /// are currently running".
    pub fn not_ready(&self) -> Option<String> {
        if self.state != "RUNNING" {
            return Some(format!("the job is {}", self.state));
        }
        let waiting: Vec<String> = self
            .vertices
            .iter()
            .filter(|v| !matches!(v.status.as_str(), "RUNNING" | "FINISHED"))
            .map(|v| format!("{} is {}", v.name, v.status))
            .collect();
        if self.vertices.is_empty() {
            return Some("the job has no tasks yet".into());
        }
        (!waiting.is_empty()).then(|| {
            format!(
                "{} of {} tasks are not RUNNING ({})",
                waiting.len(),
                self.vertices.len(),
                waiting.join(", ")
            )
        })
    }
}

#[derive(Deserialize)]
pub struct WireRequestId {
    #[serde(rename = "request-id")]
    pub request_id: String,
}

/// An asynchronous operation's status: a savepoint trigger or a disposal.
#[derive(Deserialize)]
pub struct WireOperation {
    pub status: WireOperationStatus,
    pub operation: Option<WireOperationResult>,
}

#[derive(Deserialize)]
pub struct WireOperationStatus {
    pub id: String,
}

#[derive(Deserialize)]
pub struct WireOperationResult {
    pub location: Option<String>,
    #[serde(rename = "failure-cause")]
    pub failure_cause: Option<WireFailureCause>,
}

#[derive(Deserialize)]
pub struct WireFailureCause {
    pub class: Option<String>,
    #[serde(rename = "stack-trace")]
    pub stack_trace: Option<String>,
}

impl WireFailureCause {
    pub fn summary(&self) -> String {
        match (&self.stack_trace, &self.class) {
            (Some(trace), _) if !trace.trim().is_empty() => describe_failure(trace),
            (_, Some(class)) => class.clone(),
            _ => "no failure cause given".into(),
        }
    }
}

impl WireOperation {
    /// A COMPLETED status is a failure when it carries a failure cause.
    pub fn into_outcome(self) -> Result<(State, Option<String>, Option<String>), String> {
        match self.status.id.as_str() {
            "IN_PROGRESS" => Ok((State::InProgress, None, None)),
            "COMPLETED" => match self.operation {
                Some(WireOperationResult {
                    failure_cause: Some(cause),
                    ..
                }) => Ok((State::Failed, None, Some(cause.summary()))),
                Some(WireOperationResult {
                    location: Some(location),
                    ..
                }) => Ok((State::Completed, Some(normalized(&location)), None)),
                _ => Err("status COMPLETED without a location or a failure cause".into()),
            },
            _ => Ok((State::Unknown, None, None)),
        }
    }
}

#[derive(Deserialize)]
pub struct WireCheckpoints {
    #[serde(default)]
    pub history: Vec<WireCheckpoint>,
    pub latest: Option<WireLatest>,
}

impl WireCheckpoints {
    /// The savepoint or checkpoint the job was restored from, if any.
    pub fn restored_from(&self) -> Option<String> {
        self.latest
            .as_ref()?
            .restored
            .as_ref()?
            .external_path
            .as_deref()
            .map(normalized)
    }
}

#[derive(Deserialize)]
pub struct WireLatest {
    pub restored: Option<WireRestored>,
}

#[derive(Deserialize)]
pub struct WireRestored {
    pub external_path: Option<String>,
}

#[derive(Deserialize)]
pub struct WireCheckpoint {
    pub id: u64,
    pub status: String,
    #[serde(default)]
    pub is_savepoint: bool,
    #[serde(default)]
    pub trigger_timestamp: i64,
    pub external_path: Option<String>,
    pub failure_message: Option<String>,
}

impl WireCheckpoint {
    /// A completed savepoint is named by its directory, as the directory listing names it; the others
    /// have no directory and keep Flink's checkpoint id.
    pub fn into_savepoint(self) -> Savepoint {
        let state = match self.status.as_str() {
            "IN_PROGRESS" => State::InProgress,
            "COMPLETED" => State::Completed,
            "FAILED" => State::Failed,
            _ => State::Unknown,
        };
        let location = self.external_path.as_deref().map(normalized);
        let id = match (&location, state) {
            (Some(l), State::Completed) => completed_id(l).unwrap_or_else(|| self.id.to_string()),
            _ => self.id.to_string(),
        };
        Savepoint {
            id,
            created_at: DateTime::from_timestamp_millis(self.trigger_timestamp)
                .unwrap_or_else(Utc::now),
            state,
            origin: Origin::UserRequest,
            kind: SavepointType::Full,
            location,
            failure: self.failure_message.as_deref().map(describe_failure),
            managed: None,
            protected: None,
        }
    }
}

/// The id of a completed savepoint: its directory's name (`savepoint-1a2b3c-4d5e6f7a8b9c`), the same
/// whether it was followed from its trigger, found in the job's history or listed from storage, so that
/// completion, `status` and `prune` name it alike.
pub fn completed_id(location: &str) -> Option<String> {
    location
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .filter(|n| !n.is_empty())
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const EXPIRED: &str = "java.util.concurrent.CompletionException: org.apache.flink.runtime.checkpoint.CheckpointException: Checkpoint expired before completing.\n\tat java.base/java.util.concurrent.CompletableFuture.encodeRelay(CompletableFuture.java:368)\n";

    #[test]
    fn a_completed_status_with_a_failure_cause_is_a_failure() {
        let wire: WireOperation = serde_json::from_value(json!({
            "status": {"id": "COMPLETED"},
            "operation": {"failure-cause": {
                "class": "java.util.concurrent.CompletionException",
                "stack-trace": EXPIRED,
                "serialized-throwable": "rO0AB"
            }}
        }))
        .unwrap();
        let (state, location, failure) = wire.into_outcome().unwrap();
        assert_eq!(state, State::Failed);
        assert_eq!(location, None);
        assert_eq!(
            failure.as_deref(),
            Some("expired before completing (checkpoint timeout)")
        );

        let wire: WireOperation = serde_json::from_value(json!({
            "status": {"id": "COMPLETED"},
            "operation": {"location": "file:/tmp/sp/orders/savepoint-b0d230-a58686f09ed2"}
        }))
        .unwrap();
        assert_eq!(
            wire.into_outcome().unwrap(),
            (
                State::Completed,
                Some("file:///tmp/sp/orders/savepoint-b0d230-a58686f09ed2".into()),
                None
            )
        );

        let wire: WireOperation =
            serde_json::from_value(json!({"status": {"id": "IN_PROGRESS"}, "operation": null}))
                .unwrap();
        assert_eq!(wire.into_outcome().unwrap().0, State::InProgress);

        let wire: WireOperation =
            serde_json::from_value(json!({"status": {"id": "COMPLETED"}, "operation": {}}))
                .unwrap();
        assert!(wire.into_outcome().is_err());
    }

    #[test]
    fn history_entries_decode_as_the_cluster_reports_them() {
        let history: WireCheckpoints = serde_json::from_value(json!({"history": [
            {"className": "completed", "id": 3, "status": "COMPLETED", "is_savepoint": true,
             "savepointFormat": "NATIVE", "trigger_timestamp": 1795414316826_i64,
             "latest_ack_timestamp": 1795414316863_i64, "checkpoint_type": "SAVEPOINT", "tasks": {},
             "external_path": "file:/tmp/sp/orders/savepoint-0e9c59-639cf8752245", "discarded": false},
            {"className": "failed", "id": 2, "status": "FAILED", "is_savepoint": true,
             "trigger_timestamp": 1795414315682_i64, "failure_timestamp": 1795414315689_i64,
             "failure_message": "An Exception occurred while triggering the checkpoint. IO-problem detected."},
            {"className": "in_progress", "id": 4, "status": "IN_PROGRESS", "is_savepoint": true,
             "trigger_timestamp": 1795414320000_i64},
            {"className": "completed", "id": 5, "status": "COMPLETED", "is_savepoint": false,
             "trigger_timestamp": 1795414320000_i64, "external_path": "file:/tmp/chk/chk-5"}
        ]}))
        .unwrap();
        let all: Vec<(bool, Savepoint)> = history
            .history
            .into_iter()
            .map(|c| (c.is_savepoint, c.into_savepoint()))
            .collect();
        let (_, done) = &all[0];
        assert_eq!(done.state, State::Completed);
        assert_eq!(done.id, "savepoint-0e9c59-639cf8752245");
        assert_eq!(
            done.location.as_deref(),
            Some("file:///tmp/sp/orders/savepoint-0e9c59-639cf8752245")
        );
        assert_eq!(done.created_at.timestamp_millis(), 1795414316826);
        let (_, failed) = &all[1];
        assert_eq!((failed.id.as_str(), failed.state), ("2", State::Failed));
        assert_eq!(failed.failure.as_deref(), Some("I/O problem"));
        assert_eq!(all[2].1.state, State::InProgress);
        assert!(!all[3].0, "a checkpoint is not a savepoint");
    }

    #[test]
    fn the_savepoint_a_job_was_restored_from_is_read_from_latest() {
        let wire: WireCheckpoints = serde_json::from_value(json!({
            "counts": {}, "history": [],
            "latest": {"completed": null, "savepoint": null, "failed": null,
                "restored": {"id": 7, "restore_timestamp": 1795414316826_i64, "is_savepoint": true,
                    "external_path": "file:/tmp/sp/orders/slot-20261120T010000Z/savepoint-0e9c59-639cf8752245"}}
        }))
        .unwrap();
        assert_eq!(
            wire.restored_from().as_deref(),
            Some("file:///tmp/sp/orders/slot-20261120T010000Z/savepoint-0e9c59-639cf8752245")
        );
        let fresh: WireCheckpoints =
            serde_json::from_value(json!({"history": [], "latest": {"restored": null}})).unwrap();
        assert_eq!(fresh.restored_from(), None);
    }

    #[test]
    fn a_job_is_ready_when_every_task_runs() {
        let job = |state: &str, vertices: &[&str]| WireJob {
            state: state.into(),
            vertices: vertices
                .iter()
                .map(|s| WireVertex {
                    name: "Source: datagen".into(),
                    status: (*s).into(),
                })
                .collect(),
        };
        assert_eq!(job("RUNNING", &["RUNNING", "RUNNING"]).not_ready(), None);
        assert_eq!(job("RUNNING", &["FINISHED", "RUNNING"]).not_ready(), None);
        let reason = job("RUNNING", &["RUNNING", "DEPLOYING"])
            .not_ready()
            .unwrap();
        assert!(reason.contains("1 of 2 tasks"), "{reason}");
        assert!(job("CANCELLING", &["RUNNING"]).not_ready().is_some());
        assert!(job("RUNNING", &[]).not_ready().is_some());
    }
}
