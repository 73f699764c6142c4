"""The Amazon MSK IAM token AWS's reference signer (aws-msk-iam-sasl-signer-python) makes for fixed
credentials at a fixed time, for tests/kafka_source.rs to compare the kafka source's token with.

    msk_token.py REGION ACCESS_KEY_ID SECRET_ACCESS_KEY SESSION_TOKEN|- EPOCH_SECONDS

Prints one JSON object: the token, its expiry (epoch ms) and the signer's User-Agent parameter.
Needs the signer on PYTHONPATH (SPILLWAY_TEST_KAFKA_PYTHONPATH) and boto3 (SPILLWAY_TEST_PYTHON).
"""

import datetime
import json
import sys
from unittest import mock

from botocore.credentials import CredentialProvider, Credentials

from aws_msk_iam_sasl_signer import MSKAuthTokenProvider


class FixedCredentials(CredentialProvider):
    METHOD = "fixed"

    def __init__(self, access_key, secret_key, token):
        super().__init__()
        self.credentials = Credentials(access_key, secret_key, token)

    def load(self):
        return self.credentials


def main():
    region, access_key, secret_key, session_token, epoch = sys.argv[1:6]
    frozen = datetime.datetime.fromtimestamp(int(epoch), tz=datetime.timezone.utc).replace(tzinfo=None)
    provider = FixedCredentials(access_key, secret_key, None if session_token == "-" else session_token)
    # botocore's SigV4 signer reads the time here (naive UTC).
    with mock.patch("botocore.auth.get_current_datetime", return_value=frozen):
        token, expiry_ms = MSKAuthTokenProvider.generate_auth_token_from_credentials_provider(region, provider)
    user_agent = f"{MSKAuthTokenProvider.LIB_NAME}/{MSKAuthTokenProvider.importlib.metadata.version(MSKAuthTokenProvider.LIB_NAME)}"
    print(json.dumps({"token": token, "expiry_ms": expiry_ms, "user_agent": user_agent}))


if __name__ == "__main__":
    main()
