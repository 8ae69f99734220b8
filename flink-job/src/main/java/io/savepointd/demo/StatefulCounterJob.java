package io.savepointd.demo;

import org.apache.flink.api.common.eventtime.WatermarkStrategy;
import org.apache.flink.api.common.functions.OpenContext;
import org.apache.flink.api.common.state.ValueState;
import org.apache.flink.api.common.state.ValueStateDescriptor;
import org.apache.flink.api.common.typeinfo.Types;
import org.apache.flink.api.connector.source.util.ratelimit.RateLimiterStrategy;
import org.apache.flink.connector.datagen.source.DataGeneratorSource;
import org.apache.flink.connector.datagen.source.GeneratorFunction;
import org.apache.flink.runtime.state.FunctionInitializationContext;
import org.apache.flink.runtime.state.FunctionSnapshotContext;
import org.apache.flink.streaming.api.checkpoint.CheckpointedFunction;
import org.apache.flink.streaming.api.environment.StreamExecutionEnvironment;
import org.apache.flink.streaming.api.functions.KeyedProcessFunction;
import org.apache.flink.streaming.api.functions.sink.v2.DiscardingSink;
import org.apache.flink.util.Collector;
import org.apache.flink.util.ParameterTool;

/**
 * A small stateful streaming job used to exercise savepointd against a real Flink cluster.
 *
 * <p>Pipeline: rate-limited {@link DataGeneratorSource} of keys → keyBy → per-key {@code
 * ValueState<Long>} counter → discarding sink. Every operator has a stable uid, so a job can be
 * restored from a savepoint taken by an earlier run.
 *
 * <p>Flags:
 *
 * <ul>
 *   <li>{@code --name} job name (default {@code demo-job})
 *   <li>{@code --rate} records per second over all source subtasks (default 100)
 *   <li>{@code --keys} number of distinct keys (default 100)
 *   <li>{@code --snapshot-sleep-ms} sleep in {@code snapshotState} of every counter subtask, for
 *       every checkpoint and savepoint (default 0); makes slow or timed-out savepoints reproducible
 *   <li>{@code --checkpoint-timeout-ms} checkpoint timeout, which also bounds savepoints (default:
 *       the cluster's {@code execution.checkpointing.timeout})
 *   <li>{@code --checkpoint-interval-ms} enable periodic checkpoints (default: off)
 *   <li>{@code --parallelism} job parallelism (default: the cluster's {@code parallelism.default})
 * </ul>
 */
public final class StatefulCounterJob {

    public static final String SOURCE_UID = "datagen-source";
    public static final String COUNTER_UID = "keyed-counter";
    public static final String SINK_UID = "discarding-sink";

    private StatefulCounterJob() {}

    public static void main(String[] args) throws Exception {
        ParameterTool params = ParameterTool.fromArgs(args);
        String name = params.get("name", "demo-job");
        double rate = params.getDouble("rate", 100.0);
        int keys = params.getInt("keys", 100);
        long snapshotSleepMs = params.getLong("snapshot-sleep-ms", 0L);
        long checkpointTimeoutMs = params.getLong("checkpoint-timeout-ms", 0L);
        long checkpointIntervalMs = params.getLong("checkpoint-interval-ms", 0L);
        int parallelism = params.getInt("parallelism", 0);

        if (rate <= 0) {
            throw new IllegalArgumentException("--rate must be > 0, got " + rate);
        }
        if (keys <= 0) {
            throw new IllegalArgumentException("--keys must be > 0, got " + keys);
        }
        if (snapshotSleepMs < 0) {
            throw new IllegalArgumentException(
                    "--snapshot-sleep-ms must be >= 0, got " + snapshotSleepMs);
        }

        StreamExecutionEnvironment env = StreamExecutionEnvironment.getExecutionEnvironment();
        env.getConfig().setGlobalJobParameters(params);
        if (parallelism > 0) {
            env.setParallelism(parallelism);
        }
        if (checkpointIntervalMs > 0) {
            env.enableCheckpointing(checkpointIntervalMs);
        }
        if (checkpointTimeoutMs > 0) {
            env.getCheckpointConfig().setCheckpointTimeout(checkpointTimeoutMs);
        }

        final int keyCount = keys;
        GeneratorFunction<Long, String> generator = index -> "key-" + (index % keyCount);
        DataGeneratorSource<String> source =
                new DataGeneratorSource<>(
                        generator,
                        Long.MAX_VALUE,
                        RateLimiterStrategy.perSecond(rate),
                        Types.STRING);

        env.fromSource(source, WatermarkStrategy.noWatermarks(), "datagen")
                .uid(SOURCE_UID)
                .name("datagen")
                .keyBy(value -> value)
                .process(new CountPerKey(snapshotSleepMs))
                .uid(COUNTER_UID)
                .name("count-per-key")
                .sinkTo(new DiscardingSink<>())
                .uid(SINK_UID)
                .name("discard");

        env.execute(name);
    }

    /** Counts records per key in a {@code ValueState<Long>}; optionally sleeps while snapshotting. */
    public static final class CountPerKey extends KeyedProcessFunction<String, String, String>
            implements CheckpointedFunction {

        private static final long serialVersionUID = 1L;

        private final long snapshotSleepMs;
        private transient ValueState<Long> count;

        public CountPerKey(long snapshotSleepMs) {
            this.snapshotSleepMs = snapshotSleepMs;
        }

        @Override
        public void open(OpenContext openContext) {
            count = getRuntimeContext().getState(new ValueStateDescriptor<>("count", Types.LONG));
        }

        @Override
        public void processElement(String key, Context ctx, Collector<String> out)
                throws Exception {
            Long current = count.value();
            long next = (current == null ? 0L : current) + 1;
            count.update(next);
            out.collect(key + "=" + next);
        }

        @Override
        public void snapshotState(FunctionSnapshotContext context) throws Exception {
            if (snapshotSleepMs > 0) {
                Thread.sleep(snapshotSleepMs);
            }
        }

        @Override
        public void initializeState(FunctionInitializationContext context) {
            // Keyed state is registered in open(); nothing to restore here.
        }
    }
}
