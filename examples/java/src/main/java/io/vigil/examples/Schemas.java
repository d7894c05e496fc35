package io.vigil.examples;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.file.Files;
import java.nio.file.NoSuchFileException;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.HexFormat;
import java.util.List;
import org.apache.avro.Schema;
import org.apache.avro.SchemaNormalization;

/**
 * Vigil's schema versions, read from a checkout's `schemas/` directory: `versions.tsv` lists
 * every version of every record (oldest first) with the fingerprint a single-object record
 * carries. Each file is checked against Avro's own fingerprint, so a wrong directory fails
 * here rather than as `unknown_schema` dead letters later.
 */
final class Schemas {
  /** The default directory: the repository's `schemas/`, seen from `examples/java`. */
  static final String DEFAULT_DIR = "../../schemas";

  /** One row of versions.tsv. */
  record Version(String record, int version, Schema schema, String fingerprint, String earlier) {}

  private final List<Version> versions = new ArrayList<>();

  static Schemas load(Path dir) throws IOException {
    Path tsv = dir.resolve("versions.tsv");
    List<String> lines;
    try {
      lines = Files.readAllLines(tsv);
    } catch (NoSuchFileException e) {
      throw new Cli.Exit(Cli.USAGE, "no " + tsv + ": pass --schemas with the path of Vigil's schemas/ directory");
    }
    Schemas schemas = new Schemas();
    for (String line : lines) {
      if (line.isBlank() || line.startsWith("#")) continue;
      String[] cols = line.split("\t");
      if (cols.length < 4) throw new Cli.Exit(Cli.USAGE, tsv + ": malformed line: " + line);
      // A parser per file: the versions of one record share its full name.
      Schema schema = new Schema.Parser().parse(dir.resolve(cols[2]).toFile());
      String fingerprint = fingerprintHex(schema);
      if (!fingerprint.equals(cols[3])) {
        throw new Cli.Exit(Cli.USAGE, String.format(
            "%s: Avro computes the fingerprint %s for %s, versions.tsv says %s", tsv, fingerprint, cols[2], cols[3]));
      }
      String earlier = cols.length > 4 ? cols[4].trim() : "";
      schemas.versions.add(new Version(cols[0], Integer.parseInt(cols[1]), schema, fingerprint, earlier));
    }
    return schemas;
  }

  /** Every version of `record`, oldest first. */
  List<Version> all(String record) {
    List<Version> out = versions.stream().filter(v -> v.record().equals(record)).toList();
    if (out.isEmpty()) throw new Cli.Exit(Cli.USAGE, "versions.tsv lists no version of " + record);
    return out;
  }

  /** The newest version of `record`: the one to write, and to read into. */
  Version current(String record) {
    List<Version> all = all(record);
    return all.get(all.size() - 1);
  }

  /**
   * The 8 fingerprint bytes that follow 0xC3 0x01, as lower-case hex: CRC-64-AVRO of the
   * Parsing Canonical Form, little-endian (what BinaryMessageEncoder writes).
   */
  static String fingerprintHex(Schema schema) {
    long fp = SchemaNormalization.parsingFingerprint64(schema);
    return HexFormat.of().formatHex(ByteBuffer.allocate(8).order(ByteOrder.LITTLE_ENDIAN).putLong(fp).array());
  }

  private Schemas() {}
}
