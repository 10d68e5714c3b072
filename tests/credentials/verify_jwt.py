"""Verify JWTs with PyJWT (an implementation independent of toolgate's jsonwebtoken).

usage: verify_jwt.py JWKS_FILE AUDIENCE < tokens (one per line)
Prints a JSON list of [header, claims] pairs; exits non-zero when any token fails.
"""

import json
import sys

import jwt

jwks = jwt.PyJWKSet.from_dict(json.load(open(sys.argv[1])))
audience = sys.argv[2]
keys = {k.key_id: k for k in jwks.keys}
out = []
for token in sys.stdin.read().split():
    header = jwt.get_unverified_header(token)
    key = keys[header["kid"]]
    claims = jwt.decode(
        token,
        key=key.key,
        algorithms=[header["alg"]] if header["alg"] == key.algorithm_name else [],
        audience=audience,
        options={"require": ["iss", "sub", "aud", "iat", "nbf", "exp", "jti"]},
    )
    out.append([header, claims])
print(json.dumps(out))
