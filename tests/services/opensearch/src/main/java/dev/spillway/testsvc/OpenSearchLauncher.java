package dev.spillway.testsvc;

import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.Collection;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;

import org.opensearch.analysis.common.CommonAnalysisPlugin;
import org.opensearch.common.logging.LogConfigurator;
import org.opensearch.common.settings.Settings;
import org.opensearch.env.Environment;
import org.opensearch.index.mapper.MapperExtrasPlugin;
import org.opensearch.index.reindex.ReindexPlugin;
import org.opensearch.ingest.common.IngestCommonPlugin;
import org.opensearch.node.InternalSettingsPreparer;
import org.opensearch.node.Node;
import org.opensearch.painless.PainlessPlugin;
import org.opensearch.plugins.Plugin;
import org.opensearch.script.mustache.MustachePlugin;
import org.opensearch.transport.Netty4Plugin;

/**
 * Starts one real OpenSearch 2.19 node (single-node discovery, real REST API over Netty)
 * for spillway's service-backed tests. It is not a fake: the node is OpenSearch's own
 * {@link Node}; only the launcher differs from the distribution's (no bin/ scripts, no
 * security manager, no bootstrap checks, modules loaded from the classpath instead of
 * modules/ folders).
 *
 * <p>Usage: {@code java -cp 'lib/*:launcher.jar' dev.spillway.testsvc.OpenSearchLauncher
 * --home DIR [-Ekey=value ...]}. Settings given with -E override the defaults below.
 * The process stays in the foreground; SIGTERM closes the node cleanly.
 */
public final class OpenSearchLauncher {

    /** Modules of the distribution that are loaded; everything else is absent. */
    static final List<Class<? extends Plugin>> MODULES = List.of(
        Netty4Plugin.class,          // transport-netty4: the HTTP and transport layers
        CommonAnalysisPlugin.class,  // analysis-common: lowercase, whitespace, ngram, ...
        MapperExtrasPlugin.class,    // mapper-extras: scaled_float, token_count, rank_feature, ...
        PainlessPlugin.class,        // lang-painless: scripts in updates, queries, pipelines
        ReindexPlugin.class,         // reindex: _reindex, _update_by_query, _delete_by_query
        IngestCommonPlugin.class,    // ingest-common: pipeline processors (set, rename, date, json, ...)
        MustachePlugin.class         // lang-mustache: search templates
    );

    /** Exposes Node's protected constructor that takes classpath plugins. */
    static final class EmbeddedNode extends Node {
        EmbeddedNode(Environment environment, Collection<Class<? extends Plugin>> plugins) {
            super(environment, plugins, true);
        }
    }

    public static void main(String[] args) throws Exception {
        Path home = null;
        Settings.Builder overrides = Settings.builder();
        for (int i = 0; i < args.length; i++) {
            String arg = args[i];
            if (arg.equals("--home") && i + 1 < args.length) {
                home = Paths.get(args[++i]).toAbsolutePath();
            } else if (arg.startsWith("-E") && arg.indexOf('=') > 2) {
                int eq = arg.indexOf('=');
                overrides.put(arg.substring(2, eq), arg.substring(eq + 1));
            } else {
                System.err.println("opensearch-launcher: unknown argument: " + arg);
                System.err.println("usage: OpenSearchLauncher --home DIR [-Ekey=value ...]");
                System.exit(2);
            }
        }
        if (home == null) {
            System.err.println("opensearch-launcher: --home DIR is required");
            System.exit(2);
        }

        Settings settings = Settings.builder()
            .put("cluster.name", "spillway-test")
            .put("node.name", "spillway-test-node")
            .put("path.home", home.toString())
            .put("path.data", home.resolve("data").toString())
            .put("path.logs", home.resolve("logs").toString())
            .put("discovery.type", "single-node")
            .put("network.host", "127.0.0.1")
            .put("http.port", "18092")
            .put("transport.port", "18093")
            .put("http.type", "netty4")
            .put("transport.type", "netty4")
            // a nearly full disk must not turn indices read-only or block allocation
            .put("cluster.routing.allocation.disk.threshold_enabled", false)
            .put("rest.action.multi.allow_explicit_index", true)
            .put("action.auto_create_index", true)
            .put(overrides.build())
            .build();

        Files.createDirectories(home.resolve("config"));
        Files.createDirectories(home.resolve("data"));
        Files.createDirectories(home.resolve("logs"));
        Files.createDirectories(home.resolve("plugins"));
        Files.createDirectories(home.resolve("modules"));

        LogConfigurator.registerErrorListener();
        LogConfigurator.setNodeName(settings.get("node.name"));
        LogConfigurator.configureWithoutConfig(settings);

        Environment environment = InternalSettingsPreparer.prepareEnvironment(
            settings, Map.of(), home.resolve("config"), () -> settings.get("node.name"));

        // Any failure while building or starting the node ends the process at once (threads
        // the node already started must not keep a half-built JVM alive).
        final Node node;
        try {
            node = new EmbeddedNode(environment, MODULES);
        } catch (Throwable t) {
            System.err.println("opensearch-launcher: node could not be created: " + t);
            t.printStackTrace();
            Runtime.getRuntime().halt(1);
            return;
        }
        CountDownLatch stopped = new CountDownLatch(1);
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            try {
                node.close();
                node.awaitClose(20, TimeUnit.SECONDS);
            } catch (Exception e) {
                e.printStackTrace();
            } finally {
                stopped.countDown();
            }
        }, "spillway-opensearch-shutdown"));

        try {
            node.start();
        } catch (Throwable t) {
            System.err.println("opensearch-launcher: node failed to start: " + t);
            t.printStackTrace();
            Runtime.getRuntime().halt(1);
        }
        System.out.println("opensearch-launcher: node started, http on "
            + settings.get("network.host") + ":" + settings.get("http.port"));
        stopped.await();
    }
}
