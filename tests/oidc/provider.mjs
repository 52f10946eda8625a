// The OpenID provider the tests sign in through: oidc-provider (an OpenID-certified
// implementation) on 127.0.0.1, with its development login form, one confidential client, and
// accounts whose `groups` claim the player maps to roles. Started by tests/src/oidc.rs, which
// sets: PORT, CLIENT_ID, CLIENT_SECRET, REDIRECT_URI, ACCOUNTS (JSON: {"name": ["group", ...]}).
import Provider from 'oidc-provider';

const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set`);
  return v;
};
const port = Number(env('PORT'));
const issuer = `http://127.0.0.1:${port}`;
const accounts = JSON.parse(env('ACCOUNTS'));

const provider = new Provider(issuer, {
  clients: [{
    client_id: env('CLIENT_ID'),
    client_secret: env('CLIENT_SECRET'),
    redirect_uris: [env('REDIRECT_URI')],
    grant_types: ['authorization_code'],
    response_types: ['code'],
  }],
  scopes: ['openid', 'profile'],
  claims: { openid: ['sub'], profile: ['preferred_username', 'groups'] },
  // The groups go in the ID token itself, as Entra ID puts them there.
  conformIdTokenClaims: false,
  pkce: { required: () => true },
  async findAccount(ctx, id) {
    if (!Object.hasOwn(accounts, id)) return undefined;
    return {
      accountId: id,
      async claims() {
        return { sub: id, preferred_username: id, groups: accounts[id] };
      },
    };
  },
  cookies: { keys: ['jitrec-test-provider-cookie-key'] },
  features: { devInteractions: { enabled: true } },
});

provider.listen(port, '127.0.0.1', () => {
  console.log(`oidc-provider listening on ${issuer}`);
});
