package io.vigil.examples;

import java.nio.ByteBuffer;
import java.nio.file.Path;
import java.time.Duration;
import java.util.Collection;
import java.util.HexFormat;
import java.util.HashMap;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.Set;
import java.util.UUID;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicBoolean;
import org.apache.avro.Schema;
import org.apache.avro.generic.GenericData;
import org.apache.avro.generic.GenericRecord;
import org.apache.avro.message.BinaryMessageDecoder;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.ConsumerRebalanceListener;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.errors.WakeupException;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;
import org.apache.kafka.common.serialization.StringDeserializer;

/**
 * Reads Vigil's `detections` topic (read_committed) and prints one JSON line per {@code
 * io.vigil.DetectionResult}: {@code {"frame_id","source","seq","detections":[{"label","score",
 * "box":[x_min,y_min,x_max,y_max]}]}}. Values are decoded by Avro's own {@link
 * BinaryMessageDecoder} into the newest schema, with every version of versions.tsv known as a
 * writer schema.
 *
 * <p>With --frame-id (repeatable) it prints the first result of each of those frames only,
 * and exits 0 once it has seen them all, 1 when --timeout (default 60 s) runs out first.
 * Without it, it prints every result until --timeout (if given) or Ctrl-C, then exits 0.
 * Records that do not decode are reported on stderr and skipped.
 */
public final class DetectionConsumer {
  static final String USAGE = "DetectionConsumer --bootstrap HOST:PORT [--topic detections] [--schemas DIR] "
      + "[--group ID] [--frame-id ID ...] [--timeout SECONDS] [--from-beginning]";

  public static void main(String[] args) {
    Cli.main("DetectionConsumer", () -> run(args));
  }

  static void run(String[] args) throws Exception {
    Cli cli = Cli.parse(args, USAGE, Set.of("--bootstrap", "--topic", "--schemas", "--group", "--frame-id", "--timeout"),
        Set.of("--from-beginning"));
    String bootstrap = cli.required("--bootstrap", USAGE);
    String topic = cli.get("--topic", "detections");
    if (!cli.positional.isEmpty()) throw Cli.usage(USAGE, "unexpected argument " + cli.positional.get(0));
    Set<String> wanted = new LinkedHashSet<>();
    for (String ids : cli.all("--frame-id")) {
      for (String id : ids.split(",")) if (!id.isBlank()) wanted.add(id.trim());
    }
    Integer timeoutS = cli.has("--timeout") || !wanted.isEmpty() ? cli.seconds("--timeout", 60, USAGE) : null;

    Schemas schemas = Schemas.load(Path.of(cli.get("--schemas", Schemas.DEFAULT_DIR)));
    Schema reader = schemas.current("DetectionResult").schema();
    BinaryMessageDecoder<GenericRecord> decoder = new BinaryMessageDecoder<>(GenericData.get(), reader);
    // Records written before Vigil followed the specification carry another fingerprint
    // for the same schema (versions.tsv, column `earlier`): map it to the spec one.
    Map<String, byte[]> earlier = new HashMap<>();
    HexFormat hex = HexFormat.of();
    for (Schemas.Version v : schemas.all("DetectionResult")) {
      decoder.addSchema(v.schema());
      if (!v.earlier().isEmpty()) earlier.put(v.earlier(), hex.parseHex(v.fingerprint()));
    }

    // Without --group, a fresh group per run that commits nothing: a reader, not a worker.
    String group = cli.get("--group", null);
    Properties props = new Properties();
    props.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
    props.put(ConsumerConfig.CLIENT_ID_CONFIG, "vigil-java-detection-consumer");
    props.put(ConsumerConfig.GROUP_ID_CONFIG, group != null ? group : "vigil-java-example-" + UUID.randomUUID());
    props.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, group != null);
    props.put(ConsumerConfig.ISOLATION_LEVEL_CONFIG, "read_committed");
    props.put(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG, cli.has("--from-beginning") ? "earliest" : "latest");

    AtomicBoolean assigned = new AtomicBoolean();
    Set<String> seen = new LinkedHashSet<>();
    long deadline = timeoutS == null ? Long.MAX_VALUE : System.nanoTime() + timeoutS * 1_000_000_000L;
    CountDownLatch closed = new CountDownLatch(1);
    try (KafkaConsumer<String, byte[]> consumer =
        new KafkaConsumer<>(props, new StringDeserializer(), new ByteArrayDeserializer())) {
      // Ctrl-C (SIGINT) or SIGTERM: wake the poll up and let the consumer leave its group.
      Thread hook = new Thread(() -> {
        consumer.wakeup();
        try {
          closed.await(5, TimeUnit.SECONDS);
        } catch (InterruptedException ignored) {
          // exiting anyway
        }
      });
      Runtime.getRuntime().addShutdownHook(hook);
      consumer.subscribe(List.of(topic), new ConsumerRebalanceListener() {
        @Override
        public void onPartitionsAssigned(Collection<TopicPartition> partitions) {
          if (!partitions.isEmpty()) assigned.set(true);
        }

        @Override
        public void onPartitionsRevoked(Collection<TopicPartition> partitions) {}
      });
      try {
        while (wanted.isEmpty() || !seen.containsAll(wanted)) {
          long left = deadline - System.nanoTime();
          if (left <= 0) break;
          for (ConsumerRecord<String, byte[]> r : consumer.poll(Duration.ofNanos(Math.min(left, 500_000_000L)))) {
            GenericRecord result = decode(decoder, earlier, r);
            if (result == null) continue;
            String frameId = result.get("frame_id").toString();
            if (!wanted.isEmpty() && (!wanted.contains(frameId) || !seen.add(frameId))) continue;
            System.out.println(json(result));
            System.out.flush();
          }
        }
      } catch (WakeupException e) {
        // Ctrl-C: close below
      } finally {
        try {
          Runtime.getRuntime().removeShutdownHook(hook);
        } catch (IllegalStateException ignored) {
          // already shutting down
        }
      }
    } finally {
      closed.countDown();
    }
    if (!wanted.isEmpty() && !seen.containsAll(wanted)) {
      Set<String> missing = new LinkedHashSet<>(wanted);
      missing.removeAll(seen);
      throw new Cli.Exit(Cli.FAILED, String.format("timed out after %d s: no result for %s%s", timeoutS, missing,
          assigned.get() ? "" : " (no partition of '" + topic + "' was ever assigned: is " + bootstrap
              + " reachable and does the topic exist?)"));
    }
  }

  /** The record's DetectionResult, or null (reported on stderr) when it does not decode. */
  static GenericRecord decode(BinaryMessageDecoder<GenericRecord> decoder, Map<String, byte[]> earlier,
      ConsumerRecord<String, byte[]> r) {
    byte[] value = r.value();
    String where = r.topic() + "/" + r.partition() + "@" + r.offset();
    if (value == null || value.length < 10 || (value[0] & 0xFF) != 0xC3 || value[1] != 0x01) {
      System.err.println("skipping " + where + ": not Avro single-object encoding (no 0xC3 0x01 header)");
      return null;
    }
    byte[] spec = earlier.get(HexFormat.of().formatHex(value, 2, 10));
    if (spec != null) {
      value = value.clone();
      System.arraycopy(spec, 0, value, 2, 8);
    }
    try {
      return decoder.decode(ByteBuffer.wrap(value));
    } catch (Exception e) {
      System.err.println("skipping " + where + " (fingerprint " + HexFormat.of().formatHex(value, 2, 10) + "): " + e);
      return null;
    }
  }

  static String json(GenericRecord result) {
    StringBuilder b = new StringBuilder();
    b.append("{\"frame_id\":").append(Cli.quote(result.get("frame_id").toString()));
    b.append(",\"source\":").append(Cli.quote(result.get("source").toString()));
    b.append(",\"seq\":").append((long) result.get("seq"));
    b.append(",\"detections\":[");
    boolean first = true;
    for (Object o : (List<?>) result.get("detections")) {
      GenericRecord d = (GenericRecord) o;
      if (!first) b.append(',');
      first = false;
      b.append("{\"label\":").append(Cli.quote(d.get("label").toString()));
      b.append(",\"score\":").append(Cli.number((float) d.get("score")));
      b.append(",\"box\":[");
      String[] corners = {"x_min", "y_min", "x_max", "y_max"};
      for (int i = 0; i < corners.length; i++) {
        if (i > 0) b.append(',');
        b.append(Cli.number((float) d.get(corners[i])));
      }
      b.append("]}");
    }
    return b.append("]}").toString();
  }

  private DetectionConsumer() {}
}
