//! Metric names. Each appears once, here; reports and the JSON metrics file use them as keys.

/// Messages a stage received, summed over its workers.
pub const STAGE_RECEIVED_MESSAGES_TOTAL: &str = "stage_received_messages_total";
/// Messages a stage sent (before fan-out to several consumers).
pub const STAGE_SENT_MESSAGES_TOTAL: &str = "stage_sent_messages_total";
/// Seconds spent inside `process`/`next`, excluding time blocked on a full output edge.
pub const STAGE_BUSY_SECONDS: &str = "stage_busy_seconds";
/// Seconds spent waiting for an input message (or a step credit).
pub const STAGE_STARVED_SECONDS: &str = "stage_starved_seconds";
/// Seconds spent waiting for room on a full output edge (backpressure).
pub const STAGE_BLOCKED_SECONDS: &str = "stage_blocked_seconds";
/// Busy time divided by the stage's lifetime times its worker count.
pub const STAGE_UTILIZATION: &str = "stage_utilization";
/// Messages pushed onto an edge.
pub const EDGE_PUSHED_TOTAL: &str = "edge_pushed_total";
/// Mean fraction of an edge's capacity in use, sampled by the runtime.
pub const EDGE_MEAN_FILL: &str = "edge_mean_fill";
/// Fraction of samples in which an edge was full.
pub const EDGE_FULL_FRACTION: &str = "edge_full_fraction";
