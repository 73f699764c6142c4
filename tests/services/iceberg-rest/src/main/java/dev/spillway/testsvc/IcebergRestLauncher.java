package dev.spillway.testsvc;

import jakarta.servlet.ServletConfig;
import jakarta.servlet.ServletException;
import jakarta.servlet.ServletOutputStream;
import jakarta.servlet.WriteListener;
import jakarta.servlet.http.HttpServlet;
import jakarta.servlet.http.HttpServletRequest;
import jakarta.servlet.http.HttpServletResponse;
import jakarta.servlet.http.HttpServletResponseWrapper;
import java.io.IOException;
import java.io.PrintWriter;
import java.io.Writer;
import java.nio.charset.StandardCharsets;
import java.util.HashMap;
import java.util.Map;
import java.util.UUID;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.concurrent.atomic.AtomicLong;
import java.util.regex.Pattern;
import org.apache.iceberg.CatalogUtil;
import org.apache.iceberg.catalog.Catalog;
import org.apache.iceberg.jdbc.JdbcCatalog;
import org.apache.iceberg.rest.RESTCatalogAdapter;
import org.apache.iceberg.rest.RESTCatalogServlet;
import org.eclipse.jetty.server.Server;
import org.eclipse.jetty.server.ServerConnector;
import org.eclipse.jetty.servlet.ServletContextHandler;
import org.eclipse.jetty.servlet.ServletHolder;

/**
 * Apache Iceberg's REST catalog test server (its RESTCatalogServlet and RESTCatalogAdapter, as
 * iceberg-open-api's RESTCatalogServer serves them) on 127.0.0.1 only, for tests/iceberg.rs.
 *
 * <p>Arguments are {@code key=value} catalog properties (Iceberg's names: {@code uri},
 * {@code jdbc.user}, {@code warehouse}, {@code io-impl}, {@code s3.endpoint}, ...; the backend is a
 * JdbcCatalog unless {@code catalog-impl} says otherwise), plus the test's own:
 *
 * <ul>
 *   <li>{@code spillway.port}: the port (default 0: any free one). Once serving, the server
 *       prints {@code listening on 127.0.0.1:<port>} on stdout.
 *   <li>{@code spillway.clients=id:secret,id:secret}: require OAuth2: the token endpoint
 *       ({@code /v1/oauth/tokens}) issues tokens for these client credentials only (401 {@code
 *       invalid_client} otherwise; each token logged on stderr as {@code spillway-token: issued
 *       to <id>}), and every other request needs {@code Authorization: Bearer <an issued
 *       token>} (401 otherwise).
 *   <li>{@code spillway.token-uses}: an issued token is refused after this many requests (a
 *       client must ask for a new one).
 *   <li>{@code spillway.commit-faults=N}: every N-th table commit by iceberg-rust (User-Agent
 *       {@code iceberg-rs/...}: spillway, not pyiceberg) answers 500 (Iceberg's "commit state
 *       unknown"); the first, third, ... of these are applied before the 500, the second,
 *       fourth, ... are not. Each is logged on stderr as {@code spillway-fault: ...}.
 * </ul>
 */
public final class IcebergRestLauncher {
  private IcebergRestLauncher() {}

  public static void main(String[] args) throws Exception {
    Map<String, String> props = new HashMap<>();
    for (String arg : args) {
      int eq = arg.indexOf('=');
      if (eq <= 0) {
        throw new IllegalArgumentException("arguments are key=value, not " + arg);
      }
      props.put(arg.substring(0, eq), arg.substring(eq + 1));
    }
    Map<String, String> own = new HashMap<>();
    props.entrySet().removeIf(entry -> {
      if (entry.getKey().startsWith("spillway.")) {
        own.put(entry.getKey(), entry.getValue());
        return true;
      }
      return false;
    });
    props.putIfAbsent("catalog-impl", JdbcCatalog.class.getName());
    props.putIfAbsent("jdbc.schema-version", "V1");
    Catalog backend = CatalogUtil.buildIcebergCatalog("rest_backend", props, null);
    RESTCatalogServlet iceberg = new RESTCatalogServlet(new RESTCatalogAdapter(backend));

    ServletContextHandler context = new ServletContextHandler(ServletContextHandler.NO_SESSIONS);
    context.addServlet(new ServletHolder(new Front(iceberg, own)), "/*");
    Server server = new Server();
    ServerConnector connector = new ServerConnector(server);
    connector.setHost("127.0.0.1");
    connector.setPort(Integer.parseInt(own.getOrDefault("spillway.port", "0")));
    server.addConnector(connector);
    server.setHandler(context);
    server.start();
    System.out.println("listening on 127.0.0.1:" + connector.getLocalPort());
    System.out.flush();
    server.join();
  }

  /** Authentication and injected commit faults in front of Iceberg's servlet. */
  static final class Front extends HttpServlet {
    private static final Pattern TABLE_COMMIT =
        Pattern.compile("^/v1/(?:[^/]+/)?namespaces/[^/]+/tables/[^/]+$");

    private final RESTCatalogServlet iceberg;
    private final Map<String, String> clients = new HashMap<>();
    private final int tokenUses;
    private final long commitFaults;
    private final Map<String, AtomicInteger> tokens = new ConcurrentHashMap<>();
    private final AtomicLong commits = new AtomicLong();

    Front(RESTCatalogServlet iceberg, Map<String, String> own) {
      this.iceberg = iceberg;
      for (String client : own.getOrDefault("spillway.clients", "").split(",")) {
        int colon = client.indexOf(':');
        if (colon > 0) {
          clients.put(client.substring(0, colon), client.substring(colon + 1));
        }
      }
      this.tokenUses = Integer.parseInt(own.getOrDefault("spillway.token-uses", "0"));
      this.commitFaults = Long.parseLong(own.getOrDefault("spillway.commit-faults", "0"));
    }

    @Override
    public void init(ServletConfig config) throws ServletException {
      super.init(config);
      iceberg.init(config);
    }

    @Override
    protected void service(HttpServletRequest request, HttpServletResponse response)
        throws ServletException, IOException {
      String path = request.getRequestURI();
      if (!clients.isEmpty()) {
        if (path.equals("/v1/oauth/tokens")) {
          issueToken(request, response);
          return;
        }
        if (!authorized(request)) {
          error(response, 401, "NotAuthorizedException", "not authorized: no valid bearer token");
          return;
        }
      }
      String agent = request.getHeader("User-Agent");
      boolean commit =
          request.getMethod().equals("POST")
              && TABLE_COMMIT.matcher(path).matches()
              && agent != null
              && agent.startsWith("iceberg-rs/");
      long fault = 0;
      if (commit && commitFaults > 0) {
        long number = commits.incrementAndGet();
        if (number % commitFaults == 0) {
          fault = number / commitFaults;
        }
      }
      if (fault == 0) {
        iceberg.service(request, response);
        return;
      }
      boolean applied = fault % 2 == 1;
      if (applied) {
        iceberg.service(request, new Discarded(response));
      }
      System.err.println(
          "spillway-fault: commit " + path + (applied ? " applied" : " not applied") + ", answered 500");
      error(response, 500, "CommitStateUnknownException", "injected by the test server: commit state unknown");
    }

    private void issueToken(HttpServletRequest request, HttpServletResponse response) throws IOException {
      String id = request.getParameter("client_id");
      boolean valid =
          "client_credentials".equals(request.getParameter("grant_type"))
              && id != null
              && clients.containsKey(id)
              && clients.get(id).equals(request.getParameter("client_secret"));
      if (!valid) {
        response.setStatus(401);
        response.setContentType("application/json");
        response.getWriter()
            .write("{\"error\":\"invalid_client\",\"error_description\":\"unknown client or wrong secret\"}");
        return;
      }
      String token = "issued-" + UUID.randomUUID();
      tokens.put(token, new AtomicInteger());
      System.err.println("spillway-token: issued to " + id);
      response.setStatus(200);
      response.setContentType("application/json");
      response.getWriter()
          .write(
              "{\"access_token\":\"" + token + "\",\"token_type\":\"bearer\","
                  + "\"issued_token_type\":\"urn:ietf:params:oauth:token-type:access_token\",\"expires_in\":3600}");
    }

    private boolean authorized(HttpServletRequest request) {
      String header = request.getHeader("Authorization");
      if (header == null || !header.startsWith("Bearer ")) {
        return false;
      }
      AtomicInteger uses = tokens.get(header.substring("Bearer ".length()));
      if (uses == null) {
        return false;
      }
      return tokenUses <= 0 || uses.incrementAndGet() <= tokenUses;
    }

    private static void error(HttpServletResponse response, int code, String type, String message)
        throws IOException {
      response.setStatus(code);
      response.setContentType("application/json");
      byte[] body =
          ("{\"error\":{\"message\":\"" + message + "\",\"type\":\"" + type + "\",\"code\":" + code + "}}")
              .getBytes(StandardCharsets.UTF_8);
      response.setContentLength(body.length);
      response.getOutputStream().write(body);
    }
  }

  /** A response whose status, headers and body go nowhere: the commit's own answer, lost. */
  static final class Discarded extends HttpServletResponseWrapper {
    Discarded(HttpServletResponse response) {
      super(response);
    }

    @Override
    public void setStatus(int status) {}

    @Override
    public void setHeader(String name, String value) {}

    @Override
    public void addHeader(String name, String value) {}

    @Override
    public void setContentType(String type) {}

    @Override
    public void setContentLength(int length) {}

    @Override
    public void setContentLengthLong(long length) {}

    @Override
    public void sendError(int status, String message) {}

    @Override
    public void sendError(int status) {}

    @Override
    public PrintWriter getWriter() {
      return new PrintWriter(Writer.nullWriter());
    }

    @Override
    public ServletOutputStream getOutputStream() {
      return new ServletOutputStream() {
        @Override
        public boolean isReady() {
          return true;
        }

        @Override
        public void setWriteListener(WriteListener listener) {}

        @Override
        public void write(int b) {}
      };
    }

    @Override
    public void flushBuffer() {}
  }
}
