package io.vigil.examples;

import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;

/** Command-line parsing, errors and JSON output shared by the examples (no dependencies). */
final class Cli {
  /** Exit codes, as Vigil's own commands use them. */
  static final int OK = 0, FAILED = 1, USAGE = 2;

  /** Thrown to end the program with a message on stderr and an exit code. */
  static final class Exit extends RuntimeException {
    final int code;

    Exit(int code, String message) {
      super(message);
      this.code = code;
    }
  }

  static Exit usage(String usage, String message) {
    return new Exit(USAGE, message + "\nusage: " + usage);
  }

  /** Parsed arguments: `--name value` options (repeatable) and positional arguments. */
  final Map<String, List<String>> options = new LinkedHashMap<>();
  final List<String> positional = new ArrayList<>();

  /**
   * Parses `args`: `valued` are the options that take a value (`--name value` or
   * `--name=value`), `flags` those that do not.
   */
  static Cli parse(String[] args, String usage, Set<String> valued, Set<String> flags) {
    Cli cli = new Cli();
    for (int i = 0; i < args.length; i++) {
      String arg = args[i];
      if (arg.equals("-h") || arg.equals("--help")) {
        System.out.println("usage: " + usage);
        throw new Exit(OK, null);
      }
      if (!arg.startsWith("--") || arg.equals("--")) {
        cli.positional.add(arg);
        continue;
      }
      String name = arg, value = null;
      int eq = arg.indexOf('=');
      if (eq > 0) {
        name = arg.substring(0, eq);
        value = arg.substring(eq + 1);
      }
      if (flags.contains(name) && value == null) {
        cli.options.computeIfAbsent(name, k -> new ArrayList<>()).add("true");
      } else if (valued.contains(name)) {
        if (value == null) {
          if (i + 1 >= args.length) throw usage(usage, name + " needs a value");
          value = args[++i];
        }
        cli.options.computeIfAbsent(name, k -> new ArrayList<>()).add(value);
      } else {
        throw usage(usage, "unknown option " + arg);
      }
    }
    return cli;
  }

  String get(String name, String fallback) {
    List<String> values = options.get(name);
    return values == null ? fallback : values.get(values.size() - 1);
  }

  List<String> all(String name) {
    return options.getOrDefault(name, List.of());
  }

  boolean has(String name) {
    return options.containsKey(name);
  }

  String required(String name, String usage) {
    String value = get(name, null);
    if (value == null || value.isBlank()) throw usage(usage, name + " is required");
    return value;
  }

  int seconds(String name, int fallback, String usage) {
    String value = get(name, null);
    if (value == null) return fallback;
    try {
      int s = Integer.parseInt(value);
      if (s > 0) return s;
    } catch (NumberFormatException e) {
      // below
    }
    throw usage(usage, name + " must be a positive whole number of seconds, not '" + value + "'");
  }

  /** Vigil's input contract for `source` and `frame_id`: see schemas/README.md. */
  static String contractViolation(String what, String value) {
    if (value.isBlank()) return what + " is blank";
    if (value.getBytes(StandardCharsets.UTF_8).length > 255) return what + " is longer than 255 bytes of UTF-8";
    if (value.codePoints().anyMatch(Character::isISOControl)) return what + " holds a control character";
    return null;
  }

  /** Runs `body`, printing an {@link Exit}'s message on stderr and exiting with its code. */
  static void main(String program, ThrowingRunnable body) {
    int code;
    try {
      body.run();
      code = OK;
    } catch (Exit e) {
      if (e.getMessage() != null) System.err.println(program + ": " + e.getMessage());
      code = e.code;
    } catch (Exception e) {
      System.err.println(program + ": " + e);
      code = FAILED;
    }
    System.out.flush();
    System.exit(code);
  }

  interface ThrowingRunnable {
    void run() throws Exception;
  }

  // --- JSON output -----------------------------------------------------------------------

  static String quote(CharSequence s) {
    StringBuilder b = new StringBuilder(s.length() + 2).append('"');
    for (int i = 0; i < s.length(); i++) {
      char c = s.charAt(i);
      switch (c) {
        case '"' -> b.append("\\\"");
        case '\\' -> b.append("\\\\");
        case '\n' -> b.append("\\n");
        case '\r' -> b.append("\\r");
        case '\t' -> b.append("\\t");
        default -> {
          if (c < 0x20) b.append(String.format("\\u%04x", (int) c));
          else b.append(c);
        }
      }
    }
    return b.append('"').toString();
  }

  /** A finite number as JSON; NaN and infinities (not JSON) as null. */
  static String number(double d) {
    if (Double.isNaN(d) || Double.isInfinite(d)) return "null";
    if (d == Math.rint(d) && Math.abs(d) < 1e15) return Long.toString((long) d);
    return Double.toString(d);
  }

  /** A float as the shortest decimal that reads back as the same float. */
  static String number(float f) {
    if (Float.isNaN(f) || Float.isInfinite(f)) return "null";
    if (f == Math.rint(f) && Math.abs(f) < 1e7f) return Long.toString((long) f);
    return Float.toString(f);
  }

  private Cli() {}
}
