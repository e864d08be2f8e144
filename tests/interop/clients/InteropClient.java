// A legacy Java 17 service: java.net.http.HttpClient with its defaults, so it takes the proxy
// from -Dhttps.proxyHost/-Dhttps.proxyPort and trust from -Djavax.net.ssl.trustStore, as
// any JVM program does. Nothing here names a proxy or a CA. A service the proxy must
// recognise (interop.proxyUser / interop.proxyPassword) sets an Authenticator, as the JDK
// documents; Basic through a tunnel also needs -Djdk.http.auth.tunneling.disabledSchemes=.
// Usage: java InteropClient.java SPEC, where each SPEC line is
// METHOD<TAB>URL<TAB>AUTHORIZATION or -<TAB>BODY or -. Prints one JSON object per request.

import java.io.IOException;
import java.net.Authenticator;
import java.net.PasswordAuthentication;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;

public class InteropClient {
    public static void main(String[] args) throws Exception {
        String user = System.getProperty("interop.proxyUser");
        HttpClient client = user == null
                ? HttpClient.newHttpClient()
                : HttpClient.newBuilder().authenticator(new Authenticator() {
                    @Override
                    protected PasswordAuthentication getPasswordAuthentication() {
                        if (getRequestorType() != RequestorType.PROXY) {
                            return null;
                        }
                        String password = System.getProperty("interop.proxyPassword");
                        return new PasswordAuthentication(user, password.toCharArray());
                    }
                }).build();
        for (String line : Files.readAllLines(Path.of(args[0]))) {
            if (line.isEmpty()) {
                continue;
            }
            String[] field = line.split("\t", -1);
            HttpRequest.BodyPublisher body = field[3].equals("-")
                    ? HttpRequest.BodyPublishers.noBody()
                    : HttpRequest.BodyPublishers.ofString(field[3]);
            HttpRequest.Builder request = HttpRequest.newBuilder(URI.create(field[1]))
                    .timeout(Duration.ofSeconds(30))
                    .method(field[0], body);
            if (!field[2].equals("-")) {
                request.header("Authorization", field[2]);
            }
            HttpResponse<String> response;
            try {
                response = client.send(request.build(), HttpResponse.BodyHandlers.ofString());
            } catch (IOException e) {
                // A refused CONNECT: "Unable to tunnel through proxy. Proxy returns "HTTP/1.1 407 ...".
                java.util.regex.Matcher found = java.util.regex.Pattern
                        .compile("HTTP/1\\.1 (\\d{3})").matcher(String.valueOf(e.getMessage()));
                System.out.println("{\"url\":" + quote(field[1]) + ",\"status\":"
                        + (found.find() ? found.group(1) : "0") + ",\"body\":" + quote(String.valueOf(e)) + "}");
                continue;
            }
            System.out.println("{\"url\":" + quote(field[1]) + ",\"status\":" + response.statusCode()
                    + ",\"body\":" + quote(response.body() == null ? "" : response.body()) + "}");
        }
    }

    /** A JSON string literal. */
    static String quote(String s) {
        StringBuilder out = new StringBuilder("\"");
        for (char c : s.toCharArray()) {
            switch (c) {
                case '"' -> out.append("\\\"");
                case '\\' -> out.append("\\\\");
                default -> {
                    if (c < 0x20) {
                        out.append(String.format("\\u%04x", (int) c));
                    } else {
                        out.append(c);
                    }
                }
            }
        }
        return out.append('"').toString();
    }
}
