package dev.spillway.testsvc;

import java.net.URI;
import java.net.URLDecoder;
import java.nio.charset.StandardCharsets;
import java.security.MessageDigest;
import java.time.Instant;
import java.time.ZoneOffset;
import java.time.format.DateTimeFormatter;
import java.util.ArrayList;
import java.util.Base64;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;
import javax.crypto.Mac;
import javax.crypto.spec.SecretKeySpec;
import javax.security.auth.callback.Callback;
import javax.security.auth.callback.UnsupportedCallbackException;
import javax.security.auth.login.AppConfigurationEntry;

import org.apache.kafka.common.security.auth.AuthenticateCallbackHandler;
import org.apache.kafka.common.security.oauthbearer.OAuthBearerExtensionsValidatorCallback;
import org.apache.kafka.common.security.oauthbearer.OAuthBearerToken;
import org.apache.kafka.common.security.oauthbearer.OAuthBearerValidatorCallback;

/**
 * The test broker's stand-in for Amazon MSK's IAM access control, so that spillway's {@code msk_iam}
 * source authenticates end to end: a SASL/OAUTHBEARER token must be the base64url (no padding) of a
 * SigV4-presigned {@code GET https://kafka.<region>.amazonaws.com/?Action=kafka-cluster%3AConnect}
 * (service {@code kafka-cluster}, signed header {@code host}, the empty payload's hash), signed by
 * the one access key this listener knows, in its region, not expired; the unsigned {@code User-Agent}
 * parameter is left out of the signature, as it is added after signing. The JAAS options name the
 * key ({@code accessKeyId}, {@code secretAccessKey}) and the {@code region}.
 *
 * <p>Written from the SigV4 specification, not from MSK's code (which is not public): it checks
 * what a presigned URL promises, nothing about IAM policies. A refused token is logged with why.
 */
public final class MskIamValidator implements AuthenticateCallbackHandler {
    private static final String ALGORITHM = "AWS4-HMAC-SHA256";
    private static final String SERVICE = "kafka-cluster";
    private static final String EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    private static final DateTimeFormatter AMZ_DATE =
            DateTimeFormatter.ofPattern("yyyyMMdd'T'HHmmss'Z'").withZone(ZoneOffset.UTC);

    private String accessKeyId;
    private String secretAccessKey;
    private String region;

    @Override
    public void configure(Map<String, ?> configs, String saslMechanism, List<AppConfigurationEntry> jaasConfigEntries) {
        Map<String, ?> options = jaasConfigEntries.get(0).getOptions();
        accessKeyId = (String) options.get("accessKeyId");
        secretAccessKey = (String) options.get("secretAccessKey");
        region = (String) options.get("region");
        if (accessKeyId == null || secretAccessKey == null || region == null) {
            throw new IllegalArgumentException("MskIamValidator needs accessKeyId, secretAccessKey and region");
        }
    }

    @Override
    public void handle(Callback[] callbacks) throws UnsupportedCallbackException {
        for (Callback callback : callbacks) {
            if (callback instanceof OAuthBearerValidatorCallback validation) {
                try {
                    validation.token(validate(validation.tokenValue()));
                } catch (RuntimeException refused) {
                    System.out.println("[MskIamValidator] token refused: " + refused.getMessage());
                    validation.error("invalid_token", null, null);
                }
            } else if (callback instanceof OAuthBearerExtensionsValidatorCallback extensions) {
                extensions.inputExtensions().map().keySet().forEach(extensions::valid);
            } else {
                throw new UnsupportedCallbackException(callback);
            }
        }
    }

    @Override
    public void close() {}

    private OAuthBearerToken validate(String token) {
        String url = new String(Base64.getUrlDecoder().decode(token), StandardCharsets.UTF_8);
        URI uri = URI.create(url);
        String host = "kafka." + region + ".amazonaws.com";
        require("https".equals(uri.getScheme()) && host.equals(uri.getHost()) && "/".equals(uri.getRawPath()),
                "not https://" + host + "/: " + uri.getScheme() + "://" + uri.getHost() + uri.getRawPath());
        Map<String, String> params = new HashMap<>();
        List<String[]> signed = new ArrayList<>();
        for (String pair : uri.getRawQuery().split("&")) {
            int equals = pair.indexOf('=');
            require(equals > 0, "a query parameter without a value");
            String name = URLDecoder.decode(pair.substring(0, equals), StandardCharsets.UTF_8);
            String value = URLDecoder.decode(pair.substring(equals + 1), StandardCharsets.UTF_8);
            require(params.put(name, value) == null, "repeated parameter " + name);
            if (!name.equals("X-Amz-Signature") && !name.equals("User-Agent")) {
                signed.add(new String[] {encode(name), encode(value)});
            }
        }
        require("kafka-cluster:Connect".equals(params.get("Action")), "Action is not kafka-cluster:Connect");
        require(ALGORITHM.equals(params.get("X-Amz-Algorithm")), "X-Amz-Algorithm is not " + ALGORITHM);
        require("host".equals(params.get("X-Amz-SignedHeaders")), "X-Amz-SignedHeaders is not host");
        String date = params.getOrDefault("X-Amz-Date", "");
        Instant signedAt = Instant.from(AMZ_DATE.parse(date));
        long expires = Long.parseLong(params.getOrDefault("X-Amz-Expires", "0"));
        require(expires > 0 && expires <= 900, "X-Amz-Expires must be 1-900: " + expires);
        Instant now = Instant.now();
        require(!signedAt.isAfter(now.plusSeconds(300)), "signed in the future: " + date);
        require(signedAt.plusSeconds(expires).isAfter(now), "expired: signed " + date + " for " + expires + " s");
        String scope = date.substring(0, 8) + "/" + region + "/" + SERVICE + "/aws4_request";
        String credential = params.getOrDefault("X-Amz-Credential", "");
        require(credential.equals(accessKeyId + "/" + scope),
                "X-Amz-Credential is not " + accessKeyId + "/" + scope + ": " + credential);

        signed.sort((a, b) -> a[0].equals(b[0]) ? a[1].compareTo(b[1]) : a[0].compareTo(b[0]));
        List<String> query = new ArrayList<>();
        for (String[] pair : signed) {
            query.add(pair[0] + "=" + pair[1]);
        }
        String canonical = "GET\n/\n" + String.join("&", query) + "\nhost:" + host + "\n\nhost\n" + EMPTY_SHA256;
        String toSign = ALGORITHM + "\n" + date + "\n" + scope + "\n" + hex(sha256(canonical));
        byte[] key = hmac(("AWS4" + secretAccessKey).getBytes(StandardCharsets.UTF_8), date.substring(0, 8));
        key = hmac(key, region);
        key = hmac(key, SERVICE);
        key = hmac(key, "aws4_request");
        String expected = hex(hmac(key, toSign));
        require(MessageDigest.isEqual(expected.getBytes(StandardCharsets.UTF_8),
                params.getOrDefault("X-Amz-Signature", "").getBytes(StandardCharsets.UTF_8)),
                "the signature does not match");

        String principal = "msk-iam:" + accessKeyId;
        long startMs = signedAt.toEpochMilli();
        long lifetimeMs = signedAt.plusSeconds(expires).toEpochMilli();
        System.out.println("[MskIamValidator] token accepted for " + principal + " (" + params.get("User-Agent") + ")");
        return new OAuthBearerToken() {
            @Override
            public String value() {
                return token;
            }

            @Override
            public Set<String> scope() {
                return Set.of();
            }

            @Override
            public long lifetimeMs() {
                return lifetimeMs;
            }

            @Override
            public String principalName() {
                return principal;
            }

            @Override
            public Long startTimeMs() {
                return startMs;
            }
        };
    }

    private static void require(boolean condition, String problem) {
        if (!condition) {
            throw new IllegalArgumentException(problem);
        }
    }

    /** SigV4's URI encoding: everything but the unreserved characters, as %XX. */
    private static String encode(String text) {
        StringBuilder encoded = new StringBuilder();
        for (byte b : text.getBytes(StandardCharsets.UTF_8)) {
            char c = (char) (b & 0xff);
            if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9')
                    || c == '-' || c == '_' || c == '.' || c == '~') {
                encoded.append(c);
            } else {
                encoded.append(String.format("%%%02X", b & 0xff));
            }
        }
        return encoded.toString();
    }

    private static byte[] sha256(String text) {
        try {
            return MessageDigest.getInstance("SHA-256").digest(text.getBytes(StandardCharsets.UTF_8));
        } catch (Exception e) {
            throw new IllegalStateException(e);
        }
    }

    private static byte[] hmac(byte[] key, String data) {
        try {
            Mac mac = Mac.getInstance("HmacSHA256");
            mac.init(new SecretKeySpec(key, "HmacSHA256"));
            return mac.doFinal(data.getBytes(StandardCharsets.UTF_8));
        } catch (Exception e) {
            throw new IllegalStateException(e);
        }
    }

    private static String hex(byte[] bytes) {
        StringBuilder text = new StringBuilder();
        for (byte b : bytes) {
            text.append(String.format("%02x", b & 0xff));
        }
        return text.toString();
    }
}
