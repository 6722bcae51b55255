"What every test shares."
import os

from recbook.privacy import PSEUDONYM_KEY_ENV, new_pseudonym_key

# user ids are stored and written only as keyed pseudonyms (chapter 8); the tests, the servers and the notebooks they
# start use a throwaway key unless the environment already names one
os.environ.setdefault(PSEUDONYM_KEY_ENV, new_pseudonym_key())
