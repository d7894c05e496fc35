package io.vigil.examples;

import java.io.IOException;
import java.net.InetSocketAddress;
import java.net.Socket;
import java.nio.ByteBuffer;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.time.Instant;
import java.time.temporal.ChronoUnit;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.Set;
import java.util.UUID;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;
import org.apache.avro.Schema;
import org.apache.avro.generic.GenericData;
import org.apache.avro.generic.GenericRecord;
import org.apache.avro.generic.GenericRecordBuilder;
import org.apache.avro.message.BinaryMessageEncoder;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.clients.producer.RecordMetadata;
import org.apache.kafka.common.errors.TimeoutException;
import org.apache.kafka.common.serialization.ByteArraySerializer;
import org.apache.kafka.common.serialization.StringSerializer;

/**
 * Sends image files to Vigil's `images` topic, one {@code io.vigil.Frame} per file: key = the
 * source id, value = Avro single-object encoding written by Avro's own {@link
 * BinaryMessageEncoder}. Idempotent producer with acks=all; it waits for each frame's
 * acknowledgement and prints one JSON line per frame:
 * {@code {"frame_id":…,"source":…,"partition":…,"offset":…}}.
 *
 * <p>Exit codes: 0 all sent, 1 Kafka failed (unreachable broker, refused record), 2 usage
 * (bad arguments, a missing file, a schemas directory that does not match).
 */
public final class FrameProducer {
  static final String USAGE =
      "FrameProducer --bootstrap HOST:PORT [--topic images] [--schemas DIR] [--timeout SECONDS] --source ID IMAGE...";

  /** The detector's default detector.max_record_bytes: larger frames are dead-lettered. */
  static final int MAX_RECORD_BYTES = 20 * 1024 * 1024;

  public static void main(String[] args) {
    Cli.main("FrameProducer", () -> run(args));
  }

  static void run(String[] args) throws Exception {
    Cli cli = Cli.parse(args, USAGE, Set.of("--bootstrap", "--topic", "--schemas", "--source", "--timeout"), Set.of());
    String bootstrap = cli.required("--bootstrap", USAGE);
    String topic = cli.get("--topic", "images");
    String source = cli.required("--source", USAGE);
    int timeoutS = cli.seconds("--timeout", 30, USAGE);
    String bad = Cli.contractViolation("--source", source);
    if (bad != null) throw Cli.usage(USAGE, bad);
    if (cli.positional.isEmpty()) throw Cli.usage(USAGE, "name at least one IMAGE");

    // Read every file first: nothing is sent when one is missing.
    List<Path> files = new ArrayList<>();
    List<byte[]> images = new ArrayList<>();
    for (String arg : cli.positional) {
      Path path = Path.of(arg);
      if (!Files.isRegularFile(path)) throw new Cli.Exit(Cli.USAGE, "no such file: " + arg);
      try {
        images.add(Files.readAllBytes(path));
      } catch (IOException e) {
        throw new Cli.Exit(Cli.USAGE, "cannot read " + arg + ": " + e.getMessage());
      }
      files.add(path);
    }

    Schema frame = Schemas.load(Path.of(cli.get("--schemas", Schemas.DEFAULT_DIR))).current("Frame").schema();
    BinaryMessageEncoder<GenericRecord> encoder = new BinaryMessageEncoder<>(GenericData.get(), frame);
    Schema encodingSchema = frame.getField("encoding").schema();
    String session = UUID.randomUUID().toString();

    Properties props = new Properties();
    props.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
    props.put(ProducerConfig.CLIENT_ID_CONFIG, "vigil-java-frame-producer");
    props.put(ProducerConfig.ACKS_CONFIG, "all");
    props.put(ProducerConfig.ENABLE_IDEMPOTENCE_CONFIG, true);
    props.put(ProducerConfig.MAX_REQUEST_SIZE_CONFIG, MAX_RECORD_BYTES);
    // Bound every wait: metadata (an unreachable broker), each request, each delivery.
    long timeoutMs = TimeUnit.SECONDS.toMillis(timeoutS);
    props.put(ProducerConfig.MAX_BLOCK_MS_CONFIG, timeoutMs);
    props.put(ProducerConfig.REQUEST_TIMEOUT_MS_CONFIG, (int) Math.min(timeoutMs, 30_000));
    props.put(ProducerConfig.DELIVERY_TIMEOUT_MS_CONFIG, (int) timeoutMs);
    props.put(ProducerConfig.LINGER_MS_CONFIG, 0);

    KafkaProducer<String, byte[]> producer = new KafkaProducer<>(props, new StringSerializer(), new ByteArraySerializer());
    boolean sentAll = false;
    try {
      for (int seq = 0; seq < files.size(); seq++) {
        byte[] data = images.get(seq);
        String frameId = UUID.randomUUID().toString();
        long capturedAtUs = ChronoUnit.MICROS.between(Instant.EPOCH, Instant.now());
        GenericRecord record = new GenericRecordBuilder(frame)
            .set("frame_id", frameId)
            .set("source", source)
            .set("seq", (long) seq)
            .set("captured_at_us", capturedAtUs)
            .set("encoding", new GenericData.EnumSymbol(encodingSchema, sniff(data)))
            .set("width", null)
            .set("height", null)
            .set("data", ByteBuffer.wrap(data))
            .set("attributes", Map.of("file", files.get(seq).getFileName().toString()))
            .set("session", session)
            .build();
        ByteBuffer encoded = encoder.encode(record);
        byte[] value = new byte[encoded.remaining()];
        encoded.get(value);

        RecordMetadata sent;
        try {
          sent = producer.send(new ProducerRecord<>(topic, source, value)).get();
        } catch (TimeoutException e) {
          throw new Cli.Exit(Cli.FAILED, unreachable(bootstrap, topic, timeoutS, e));
        } catch (ExecutionException e) {
          Throwable cause = e.getCause();
          if (cause instanceof TimeoutException) throw new Cli.Exit(Cli.FAILED, unreachable(bootstrap, topic, timeoutS, cause));
          throw new Cli.Exit(Cli.FAILED, "Kafka refused frame " + frameId + " (" + files.get(seq) + "): " + cause);
        }
        System.out.printf("{\"frame_id\":%s,\"source\":%s,\"partition\":%d,\"offset\":%d}%n",
            Cli.quote(frameId), Cli.quote(source), sent.partition(), sent.offset());
        System.out.flush();
      }
      sentAll = true;
    } finally {
      // Every frame printed is acknowledged: after a failure there is nothing to wait for.
      producer.close(sentAll ? Duration.ofMillis(timeoutMs) : Duration.ZERO);
    }
  }

  /** The encoding enum symbol for `data`, from its magic bytes (as Vigil sniffs them). */
  static String sniff(byte[] d) {
    if (starts(d, 0xFF, 0xD8, 0xFF)) return "JPEG";
    if (starts(d, 0x89, 'P', 'N', 'G', 0x0D, 0x0A, 0x1A, 0x0A)) return "PNG";
    if (starts(d, 'G', 'I', 'F', '8') && d.length >= 6 && (d[4] == '7' || d[4] == '9') && d[5] == 'a') return "GIF";
    if (starts(d, 'B', 'M') && d.length >= 14) return "BMP";
    if (starts(d, 'R', 'I', 'F', 'F') && d.length >= 12 && d[8] == 'W' && d[9] == 'E' && d[10] == 'B' && d[11] == 'P') {
      return "WEBP";
    }
    return "UNKNOWN";
  }

  private static boolean starts(byte[] data, int... prefix) {
    if (data.length < prefix.length) return false;
    for (int i = 0; i < prefix.length; i++) if ((data[i] & 0xFF) != prefix[i]) return false;
    return true;
  }

  /** Explains a timeout: no broker listening at all, or one that never answered in time. */
  private static String unreachable(String bootstrap, String topic, int timeoutS, Throwable e) {
    boolean anyListening = false;
    for (String server : bootstrap.split(",")) {
      int colon = server.lastIndexOf(':');
      if (colon <= 0) continue;
      try (Socket s = new Socket()) {
        s.connect(new InetSocketAddress(server.substring(0, colon).trim(), Integer.parseInt(server.substring(colon + 1).trim())), 2000);
        anyListening = true;
      } catch (IOException | RuntimeException ignored) {
        // not listening
      }
    }
    return anyListening
        ? String.format("%s accepts connections but gave no metadata or acknowledgement for topic '%s' within %d s (%s): "
            + "the topic does not exist, or the broker and this kafka-clients version cannot talk (README.md)",
            bootstrap, topic, timeoutS, e.getMessage())
        : String.format("cannot reach any Kafka broker at %s (nothing accepts connections there; gave up after %d s)",
            bootstrap, timeoutS);
  }

  private FrameProducer() {}
}
