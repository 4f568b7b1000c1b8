/**
 * Generates a Portage repository shaped like a real one, for measuring `fastpull sync-repo`:
 * categories, ~3 ebuilds per package, md5-cache entries as egencache writes them (with the
 * DEPEND/IUSE/KEYWORDS lines that make them ~1 KiB), SRC_URI with USE conditionals, arrows,
 * mirror:// and RESTRICT, and a thin Manifest per package. Digests are random: the dry run
 * parses and plans, it never downloads.
 *
 *   node --import tsx bench/gen-repo.ts <dir> [ebuilds=10000]
 */
import { randomBytes } from 'node:crypto';
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { pathToFileURL } from 'node:url';

const hex = () => randomBytes(64).toString('hex');

export interface GeneratedRepo {
  ebuilds: number;
  packages: number;
  categories: number;
  distfiles: number;
}

export async function generateRepo(root: string, ebuilds = 10_000): Promise<GeneratedRepo> {
  const categoryCount = Math.max(1, Math.round(ebuilds / 60));
  const categories = Array.from({ length: categoryCount }, (_, i) => `cat${String(i).padStart(3, '0')}-${['libs', 'misc', 'util', 'lang'][i % 4]}`);
  await mkdir(path.join(root, 'profiles'), { recursive: true });
  await writeFile(path.join(root, 'profiles', 'categories'), `${categories.join('\n')}\n`);
  await writeFile(
    path.join(root, 'profiles', 'thirdpartymirrors'),
    'sourceforge https://downloads.sourceforge.net https://netcologne.dl.sourceforge.net\n' +
      'gnu https://ftp.gnu.org/gnu https://ftpmirror.gnu.org\npypi https://files.pythonhosted.org/packages/source\n',
  );
  let packages = 0;
  let distfiles = 0;
  let made = 0;
  const writes: Promise<void>[] = [];
  const flush = async () => {
    await Promise.all(writes.splice(0));
  };
  for (let p = 0; made < ebuilds; p++) {
    const category = categories[p % categoryCount]!;
    const pn = `pkg${p}`;
    const versions = Math.min(3, ebuilds - made);
    packages++;
    const manifest: string[] = [];
    await mkdir(path.join(root, category, pn), { recursive: true });
    await mkdir(path.join(root, 'metadata', 'md5-cache', category), { recursive: true });
    for (let v = 1; v <= versions; v++, made++) {
      const pv = `${v}.${p % 7}.${p % 3}`;
      const main = `${pn}-${pv}.tar.gz`;
      const docs = `${pn}-docs-${pv}.tar.xz`;
      const kind = made % 10;
      const srcUri =
        kind === 0
          ? `mirror://sourceforge/${pn}/${main}`
          : kind === 1
            ? `https://github.com/example/${pn}/archive/v${pv}.tar.gz -> ${main}`
            : kind === 2
              ? `mirror://pypi/${pn[0]}/${pn}/${main}`
              : `https://example.org/${pn}/${main}`;
      const extra = made % 3 === 0 ? ` doc? ( https://example.org/${pn}/docs/${docs} ) !minimal? ( || ( https://example.org/${pn}/alt/${docs} ) )` : '';
      const restrict = made % 50 === 0 ? 'RESTRICT=fetch\n' : made % 25 === 0 ? 'RESTRICT=mirror test\n' : '';
      const entry =
        `BDEPEND=virtual/pkgconfig\nDEFINED_PHASES=compile configure install prepare test\n` +
        `DEPEND=>=dev-libs/libfoo-1.2:= ssl? ( dev-libs/openssl:0= ) dev-libs/bar\n` +
        `DESCRIPTION=Generated package ${pn} for the sync-repo benchmark\nEAPI=8\nHOMEPAGE=https://example.org/${pn}\n` +
        `IUSE=doc ssl minimal test\nKEYWORDS=~amd64 ~arm64 ~x86\nLICENSE=MIT\nRDEPEND=dev-libs/libfoo ssl? ( dev-libs/openssl )\n` +
        `${restrict}SLOT=0\nSRC_URI=${srcUri}${extra}\n_eclasses_=toolchain-funcs ${hex().slice(0, 32)}\n_md5_=${hex().slice(0, 32)}\n`;
      writes.push(writeFile(path.join(root, 'metadata', 'md5-cache', category, `${pn}-${pv}`), entry));
      writes.push(writeFile(path.join(root, category, pn, `${pn}-${pv}.ebuild`), '# generated\n'));
      manifest.push(`DIST ${main} ${1000 + ((made * 7919) % 5_000_000)} BLAKE2B ${hex()} SHA512 ${hex()}`);
      distfiles++;
      if (extra) {
        manifest.push(`DIST ${docs} ${2000 + made} BLAKE2B ${hex()} SHA512 ${hex()}`);
        distfiles++;
      }
    }
    writes.push(writeFile(path.join(root, category, pn, 'Manifest'), `${manifest.sort().join('\n')}\n`));
    if (writes.length > 256) await flush();
  }
  await flush();
  return { ebuilds: made, packages, categories: categoryCount, distfiles };
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const [dir, count] = process.argv.slice(2);
  if (!dir) {
    console.error('usage: gen-repo.ts <dir> [ebuilds]');
    process.exit(2);
  }
  console.log(JSON.stringify(await generateRepo(path.resolve(dir), count ? Number(count) : undefined)));
}
