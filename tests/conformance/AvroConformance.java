// What the Java reference implementation of Avro computes for Vigil's schemas, as one JSON
// object on stdout, for tests/tests/avro_conformance.rs to compare with Vigil and fastavro:
// every version's Parsing Canonical Form and fingerprint (as the 8 bytes a single-object
// record carries), whether the newest version of each record reads every older one, and the
// single-object encoding (Avro's own BinaryMessageEncoder) of the samples.
//
//   java -cp 'JARS/*' AvroConformance.java SCHEMAS_DIR SAMPLES_JSON [RECORDS_JSON]
//
// SAMPLES_JSON holds one value per record in Avro's JSON encoding. RECORDS_JSON, when
// given, maps a record name to the hex of a single-object record written by another
// implementation: each is decoded with BinaryMessageDecoder (every version known) and
// encoded again, under "reencoded".

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ArrayNode;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.HexFormat;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import org.apache.avro.Schema;
import org.apache.avro.SchemaCompatibility;
import org.apache.avro.SchemaNormalization;
import org.apache.avro.generic.GenericData;
import org.apache.avro.generic.GenericDatumReader;
import org.apache.avro.generic.GenericRecord;
import org.apache.avro.io.DecoderFactory;
import org.apache.avro.message.BinaryMessageDecoder;
import org.apache.avro.message.BinaryMessageEncoder;

public class AvroConformance {
  record Version(String record, int version, String file, Schema schema) {}

  public static void main(String[] args) throws Exception {
    if (args.length < 2) {
      System.err.println("usage: AvroConformance SCHEMAS_DIR SAMPLES_JSON [RECORDS_JSON]");
      System.exit(2);
    }
    Path dir = Path.of(args[0]);
    ObjectMapper json = new ObjectMapper();
    JsonNode samples = json.readTree(Files.readString(Path.of(args[1])));
    HexFormat hex = HexFormat.of();

    // Every version of schemas/versions.tsv, each file parsed on its own.
    Map<String, List<Version>> byRecord = new LinkedHashMap<>();
    for (String line : Files.readAllLines(dir.resolve("versions.tsv"))) {
      if (line.isBlank() || line.startsWith("#")) continue;
      String[] cols = line.split("\t");
      Schema schema = new Schema.Parser().parse(Files.readString(dir.resolve(cols[2])));
      byRecord.computeIfAbsent(cols[0], k -> new ArrayList<>())
          .add(new Version(cols[0], Integer.parseInt(cols[1]), cols[2], schema));
    }

    ObjectNode out = json.createObjectNode();
    out.put("implementation", "Apache Avro for Java " + Schema.class.getPackage().getImplementationVersion());
    ArrayNode versions = out.putArray("schemas");
    ArrayNode compatibility = out.putArray("compatibility");
    ObjectNode encoded = out.putObject("encoded");
    ObjectNode reencoded = out.putObject("reencoded");
    JsonNode records = args.length > 2 ? json.readTree(Files.readString(Path.of(args[2]))) : null;

    for (List<Version> all : byRecord.values()) {
      Version newest = all.get(0);
      for (Version v : all) {
        if (v.version() > newest.version()) newest = v;
      }
      BinaryMessageDecoder<GenericRecord> decoder = new BinaryMessageDecoder<>(GenericData.get(), newest.schema());
      for (Version v : all) {
        long fingerprint = SchemaNormalization.parsingFingerprint64(v.schema());
        ObjectNode row = versions.addObject();
        row.put("record", v.record());
        row.put("version", v.version());
        row.put("file", v.file());
        row.put("canonical_form", SchemaNormalization.toParsingForm(v.schema()));
        row.put("fingerprint", hex.formatHex(
            ByteBuffer.allocate(8).order(ByteOrder.LITTLE_ENDIAN).putLong(fingerprint).array()));
        if (v != newest) {
          decoder.addSchema(v.schema());
          ObjectNode check = compatibility.addObject();
          check.put("record", v.record());
          check.put("reader", newest.version());
          check.put("writer", v.version());
          check.put("result", SchemaCompatibility.checkReaderWriterCompatibility(newest.schema(), v.schema())
              .getType().toString());
        }
      }

      String name = newest.record();
      BinaryMessageEncoder<GenericRecord> encoder = new BinaryMessageEncoder<>(GenericData.get(), newest.schema());
      if (samples.has(name)) {
        GenericRecord sample = new GenericDatumReader<GenericRecord>(newest.schema())
            .read(null, DecoderFactory.get().jsonDecoder(newest.schema(), samples.get(name).toString()));
        encoded.put(name, hex.formatHex(bytes(encoder.encode(sample))));
      }
      if (records != null && records.has(name)) {
        GenericRecord read = decoder.decode(hex.parseHex(records.get(name).asText()));
        reencoded.put(name, hex.formatHex(bytes(encoder.encode(read))));
      }
    }
    System.out.println(json.writerWithDefaultPrettyPrinter().writeValueAsString(out));
  }

  private static byte[] bytes(ByteBuffer buffer) {
    byte[] out = new byte[buffer.remaining()];
    buffer.get(out);
    return out;
  }
}
